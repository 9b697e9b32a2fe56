"""One Pick-a-Pic v2 comparison out of a parquet batch, as the audit and the trainer both read it.

The column names are `schemas/pickapic.py`'s. Cells come back raw (the label unchecked, the caption
of any type): what a bad row means is the caller's (the audit counts a skip reason, the trainer
logs and drops it). Image cells are bytes or None, never anything a decoder could take for a path.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from schemas.pickapic import CAPTION, IMAGE_COLUMNS, LABEL_COLUMNS, MODEL_COLUMNS, REQUIRED_COLUMNS


@dataclass(frozen=True)
class Comparison:
    """Row `row` of a file: a caption, images 0 and 1 (bytes or None), `label_0` and the two generators."""

    row: int
    caption: Any
    images: tuple[bytes | None, bytes | None]
    label_0: Any
    models: tuple[Any, Any] = (None, None)
    refused: str | None = None  # why an image cell was left unread (over the byte cap); that image is None


def missing_columns(names: Iterable[str]) -> list[str]:
    """The required Pick-a-Pic columns a file's schema lacks (empty: it can be read)."""
    have = set(names)
    return [c for c in REQUIRED_COLUMNS if c not in have]


def read_columns(names: Iterable[str], models: bool = True) -> list[str]:
    """The columns to read: the required ones, and the model columns the file has when `models`."""
    have = set(names)
    return [*REQUIRED_COLUMNS, *(c for c in MODEL_COLUMNS if models and c in have)]


def image_bytes(cell: Any) -> bytes | None:
    """An image cell as bytes: plain binary, or the {bytes, path} struct of a `datasets` Image column.
    Anything else is None (a path in a cell is not followed: the file is untrusted)."""
    if isinstance(cell, dict):
        cell = cell.get("bytes")
    return cell if isinstance(cell, bytes) else None


def cell_bytes(scalar: pa.Scalar) -> int:
    """Size of an image cell's bytes, read from the Arrow buffer without copying (0 when not binary)."""
    if isinstance(scalar, pa.StructScalar):
        scalar = scalar.get("bytes") if "bytes" in [f.name for f in scalar.type] else None
    if not isinstance(scalar, (pa.BinaryScalar, pa.LargeBinaryScalar)) or not scalar.is_valid:
        return 0
    return scalar.as_buffer().size


def comparison(batch: pa.RecordBatch, i: int, row: int, max_image_bytes: int | None = None) -> Comparison:
    """Row `i` of `batch` (file row `row`); only this row's cells are converted to Python, so a reader
    that keeps few rows of a batch pays for those only. An image cell over `max_image_bytes` is not
    converted at all: it comes back None, with why in `refused`."""
    names = set(batch.schema.names)

    def cell(name: str) -> Any:
        return batch.column(name)[i].as_py() if name in names else None

    images: list[bytes | None] = []
    refused = None
    for side, name in enumerate(IMAGE_COLUMNS):
        size = cell_bytes(batch.column(name)[i]) if name in names and max_image_bytes is not None else 0
        if max_image_bytes is not None and size > max_image_bytes:
            images.append(None)
            refused = refused or f"image {side}: {name} holds {size} bytes, over the {max_image_bytes}-byte limit"
        else:
            images.append(image_bytes(cell(name)))
    return Comparison(row, cell(CAPTION), (images[0], images[1]), cell(LABEL_COLUMNS[0]),
                      (cell(MODEL_COLUMNS[0]), cell(MODEL_COLUMNS[1])), refused)
