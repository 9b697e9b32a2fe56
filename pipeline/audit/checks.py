"""What makes an audit row unusable before any image is decoded: the fields, then the label.

Shared by the planner (a pair file's rows are checked on the driver, so rows that can never be scored
are not read at all) and the scoring actor (every row, whatever its kind). Each outcome is a skip
reason of `schemas.audit.SKIP_REASONS` with a one-line detail.
"""
from __future__ import annotations

import math
from typing import Any

from schemas.audit import SCORED
from schemas.pickapic import preferred_index


def _kind(value: Any) -> str:
    return "a JSON object" if isinstance(value, dict) else "a list" if isinstance(value, list) else type(value).__name__


def check_row(row: dict[str, Any]) -> tuple[str, str | None]:
    """(status, detail) of a raw row before decoding: a status the planner already found, then missing
    or non-text fields, then the label (ties are skipped: they carry no preference to agree with),
    then an image that could not be read (`error`, its reason in `error_reason`)."""
    if row.get("status"):
        return row["status"], row.get("detail")
    caption = row.get("caption")
    if caption is None:
        return "missing_field", "caption is missing"
    if not isinstance(caption, str):
        return "missing_field", f"caption is {_kind(caption)}, not text"
    for i in (0, 1):
        if row.get(f"img_{i}") is None and not row.get("error"):  # error: a path given but not read
            return "missing_field", f"image {i} is missing"
    label = row.get("label_0")
    if isinstance(label, bool):  # JSON true is not the number 1
        return "bad_label", f"label_0 = {label!r} is not a number"
    try:
        label = float(label) if label is not None else None
    except (TypeError, ValueError, OverflowError):
        return "bad_label", f"label_0 = {row['label_0']!r} is not a number"
    if label is not None and math.isnan(label):
        label = None
    try:
        if preferred_index(label) is None:
            return "tie_label", "label_0 = 0.5"
    except ValueError as err:
        return ("missing_field" if label is None else "bad_label"), str(err)
    if row.get("error"):
        return row.get("error_reason") or "corrupt_image", row["error"]
    return SCORED, None
