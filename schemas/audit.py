"""Audit contracts: the AuditConfig (YAML, strict, one-line errors) and the per-row score table.

The score table is what the audit's actors write (part files keyed by `row_id`) and what the
analysis reads: one row per input pair, scored or skipped with its reason, never image bytes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import Field, model_validator

from schemas.config import (
    RayConfig,
    ResourceConfig,
    RewardModelConfig,
    Strict,
    validate_config,
)
from schemas.config_io import read_yaml
from schemas.tables import REWARD_MODEL_NAMES

#: Row status of a scored pair; every other status is a skip reason.
SCORED = "scored"
#: Skip reasons, in the order the checks run on a row.
# "failed": a reward model raised on this pair alone (docs/architecture.md, "Errors")
SKIP_REASONS: tuple[str, ...] = ("missing_field", "bad_label", "tie_label", "image_too_large", "corrupt_image", "failed")


class AuditConfig(Strict):
    """How an audit scores a dataset. The default is the offline demo: five tiny models on CPU."""

    reward_models: list[RewardModelConfig] = Field(
        default_factory=lambda: [RewardModelConfig(name=n) for n in REWARD_MODEL_NAMES],
        min_length=2,
        description="Reward models voting on every pair (same entries as a build config's scoring.reward_models).",
    )
    resources: ResourceConfig = Field(
        default_factory=lambda: ResourceConfig(num_cpus=1, num_actors=2, batch_size=8),
        description="Score actor pool; batch_size = pairs per model call (2 x batch_size images).",
    )
    unit_rows: int | None = Field(
        None, ge=1,
        description="Most rows per work unit (the resume granularity); default: one parquet row group "
        "(pyarrow decodes a row group whole, so smaller units re-read it), 256 rows of a jsonl/csv.",
    )
    max_pixels: int = Field(
        64_000_000, ge=1, description="Images whose header claims more pixels are skipped undecoded (image_too_large)."
    )
    video_frames: int = Field(4, ge=1, description="Frames sampled per video of a video shard; its score is the frames' mean.")
    max_video_frames: int = Field(
        2000, ge=1, description="Videos whose container claims more frames are skipped undecoded (image_too_large)."
    )
    examples: int = Field(12, ge=0, description="Conflicting pairs shown side by side in report.html.")
    thumbnail_px: int = Field(192, ge=16, description="Longest side of the report's example thumbnails.")
    ray: RayConfig = Field(default_factory=RayConfig, description="Where the score actors run.")
    cache_dir: str | None = Field(None, description="Where tiny models are materialised; default ~/.cache/vipo.")

    @model_validator(mode="after")
    def _unique(self) -> AuditConfig:
        names = self.scorer_names
        if len(set(names)) != len(names):
            raise ValueError(f"reward_models: duplicate names {names}")
        return self

    @property
    def scorer_names(self) -> list[str]:
        return [r.name for r in self.reward_models]


def parse_audit_config(data: Any, source: str = "<audit config>") -> AuditConfig:
    return validate_config(AuditConfig, {} if data is None else data, source)


def load_audit_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> AuditConfig:
    """Load and validate an audit YAML (None: the defaults); raises ConfigError with one line."""
    if path is None:
        return parse_audit_config(dict(overrides or {}), "<default audit config>")
    data = read_yaml(path)
    if overrides:
        data = {**(data or {}), **overrides}
    return parse_audit_config(data, str(path))


def audit_scores_schema(scorers: list[str]) -> pa.Schema:
    """One row per input pair: where it comes from, why it was skipped, and both images' scores."""
    fields = [
        ("row_id", pa.string()),  # "<source key>:<row index>", row index within its source file
        ("unit_id", pa.string()),
        ("source", pa.int32()),  # index into the audit's list of input files
        ("row", pa.int64()),  # row index within that file
        ("status", pa.string()),  # SCORED or a SKIP_REASONS entry
        ("detail", pa.string()),  # the error message of a skipped row
        ("label_0", pa.float64()),
        ("model_0", pa.string()),
        ("model_1", pa.string()),
    ]
    for s in scorers:
        fields += [(f"{s}_0", pa.float32()), (f"{s}_1", pa.float32())]
    return pa.schema(fields)
