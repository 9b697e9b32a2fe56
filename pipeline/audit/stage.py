"""The audit's model stage: an actor reads its unit's rows itself, checks each row, decodes both images
(bounded by `max_pixels` before any pixel is decoded) and scores them with every reward model.

A bad row never fails the unit: it becomes a row with its skip reason (schemas.audit.SKIP_REASONS)
and the error text, so the audit can count and explain what it left out.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.audit.read import iter_unit
from pipeline.stage import ActorStage
from schemas.audit import SCORED, audit_scores_schema
from schemas.pickapic import preferred_index


def check_row(row: dict[str, Any]) -> tuple[str, str | None]:
    """(status, detail) of a raw row before decoding: missing fields, then the label (ties are
    skipped: they carry no preference to agree with)."""
    if row.get("unsupported"):
        return "unsupported_media", row.get("error")
    if row.get("caption") is None:
        return "missing_field", "caption is missing"
    if row.get("error"):
        return "corrupt_image", row["error"]
    for i in (0, 1):
        if row.get(f"img_{i}") is None:
            return "missing_field", f"image {i} is missing"
    try:
        label = float(row["label_0"]) if row.get("label_0") is not None else None
    except (TypeError, ValueError):
        return "bad_label", f"label_0 = {row['label_0']!r} is not a number"
    if label is not None and math.isnan(label):
        label = None
    try:
        if preferred_index(label) is None:
            return "tie_label", "label_0 = 0.5"
    except ValueError as err:
        return ("missing_field" if label is None else "bad_label"), str(err)
    return SCORED, None


def decode_pair(row: dict[str, Any], max_pixels: int) -> tuple[str, str | None, list]:
    """Both images of a row, or the reason they cannot be used."""
    from pipeline.media import decode_image

    images = []
    for i in (0, 1):
        try:
            images.append(decode_image(row[f"img_{i}"], max_pixels=max_pixels))
        except ValueError as err:
            if "refused before decoding" in str(err):
                return "image_too_large", f"image {i}: {err}", []
            return "corrupt_image", f"image {i}: {err}", []
        except Exception as err:  # noqa: BLE001 - PIL raises many types on malformed bytes; all mean "corrupt"
            return "corrupt_image", f"image {i}: {type(err).__name__}: {err}", []
    return SCORED, None, images


def _label(row: dict[str, Any]) -> float | None:
    try:
        return float(row["label_0"])
    except (TypeError, ValueError, KeyError):
        return None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass
class AuditScoreStage(ActorStage):
    """All reward models on one actor; a unit is a row range of one input file."""

    models: list[tuple[str, str, str, dict]] = field(default_factory=list)  # (name, path or hub id, dtype, options)
    max_pixels: int = 64_000_000
    name = "audit"

    def setup(self) -> None:
        import torch

        from reward_models.registry import reward_model_class

        device = "cuda" if self.resources.num_gpus > 0 else "cpu"
        self.loaded = {
            name: reward_model_class(name).from_pretrained(path, device=device, dtype=getattr(torch, dtype), **options)
            for name, path, dtype, options in self.models
        }

    @property
    def scorers(self) -> list[str]:
        return [m[0] for m in self.models]

    def process(self, tasks: list[dict[str, Any]]) -> pa.Table:
        schema = audit_scores_schema(self.scorers)
        return pa.concat_tables([self._unit(t, schema) for t in tasks])

    def _unit(self, unit: dict[str, Any], schema: pa.Schema) -> pa.Table:
        cols: dict[str, list] = {name: [] for name in schema.names}
        for batch in iter_unit(unit, self.resources.batch_size):
            ok_rows, ok_images = [], []
            for row in batch:
                status, detail = check_row(row)
                images: list = []
                if status == SCORED:
                    status, detail, images = decode_pair(row, self.max_pixels)
                cols["row_id"].append(f"{unit['key']}:{row['row']:010d}")
                cols["unit_id"].append(unit["id"])
                cols["source"].append(unit["source"])
                cols["row"].append(row["row"])
                cols["status"].append(status)
                cols["detail"].append(detail)
                cols["label_0"].append(_label(row))
                cols["model_0"].append(_text(row.get("model_0")))
                cols["model_1"].append(_text(row.get("model_1")))
                if status == SCORED:
                    ok_rows.append(len(cols["row_id"]) - 1)
                    ok_images.append((images, str(row["caption"])))
            scores = self._score(ok_images)
            n_before = len(cols[f"{self.scorers[0]}_0"])
            for name in self.scorers:
                for side in (0, 1):
                    col = cols[f"{name}_{side}"]
                    col.extend([None] * (len(cols["row_id"]) - n_before))
                    for k, at in enumerate(ok_rows):
                        col[at] = float(scores[name][side][k])
        return pa.table({f.name: pa.array(cols[f.name], type=f.type) for f in schema}, schema=schema)

    def _score(self, pairs: list[tuple[list, str]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per model: (scores of images 0, scores of images 1); both sides go through one call."""
        if not pairs:
            return {name: (np.zeros(0), np.zeros(0)) for name in self.scorers}
        n = len(pairs)
        images = [p[0][0] for p in pairs] + [p[0][1] for p in pairs]
        prompts = [p[1] for p in pairs] * 2
        out = {}
        for name, model in self.loaded.items():
            s = np.asarray(model.score(images, prompts), dtype=np.float32)
            out[name] = (s[:n], s[n:])
        return out
