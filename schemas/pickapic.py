"""The Pick-a-Pic v2 row contract (yuvalkirstain/pickapic_v2 parquet), shared by `audit` and the trainer.

A row is one comparison: a caption, two encoded images (`jpg_0`, `jpg_1`, raw bytes) and the human
label as a pair of floats: `label_0 = 1` means image 0 was preferred, `0` image 1, `0.5` a tie
(`label_1 = 1 - label_0`). Rows carry more columns (ids, urls, user, ranking); readers keep them
untouched so an exported subset has the input's own schema.
"""
from __future__ import annotations

import math

CAPTION = "caption"
IMAGE_COLUMNS = ("jpg_0", "jpg_1")
LABEL_COLUMNS = ("label_0", "label_1")
MODEL_COLUMNS = ("model_0", "model_1")
#: Columns a row must have to be read at all.
REQUIRED_COLUMNS = (CAPTION, *IMAGE_COLUMNS, LABEL_COLUMNS[0])
#: Values `label_0` may take.
LABEL_VALUES = (0.0, 0.5, 1.0)
TIE = 0.5


def preferred_index(label_0: float) -> int | None:
    """0 or 1 for the image the human preferred; None for a tie.

    Raises ValueError for anything that is not one of LABEL_VALUES (NaN included), so a caller can
    count the row as bad and go on.
    """
    if label_0 is None or (isinstance(label_0, float) and math.isnan(label_0)):
        raise ValueError("label_0 is missing")
    value = float(label_0)
    if value not in LABEL_VALUES:
        raise ValueError(f"label_0 = {label_0!r}, expected one of {LABEL_VALUES}")
    return None if value == TIE else (0 if value == 1.0 else 1)
