"""The shard contract (docs/dataset_format.md), used by the writer, by `verify` and by the readers."""
from __future__ import annotations

from schemas.categories import Modality

DATASET_VERSION = "vipo-1.0"
SHARD_PATTERN = "{split}-{index:06d}.tar"
SIDECAR_PATTERN = "{split}-{index:06d}.parquet"
MANIFEST_NAME = "manifest.json"
TAR_MTIME = 0  # fixed member mtime: the same data gives byte-identical tars
TAR_OWNER = "vipo"
TAR_MODE = 0o444  # members are read-only

IMAGE_EXTENSIONS = ("jpg", "png", "webp")
VIDEO_EXTENSION = "mp4"

# Top-level keys of every sample's json member.
JSON_FIELDS: tuple[str, ...] = (
    "pair_id",
    "prompt_id",
    "prompt",
    "category",
    "modality",
    "winner",
    "loser",
    "margins",
    "agreement",
    "vlm_probability",
    "dataset_version",
)
# Keys of the winner / loser records inside the json member.
RECORD_FIELDS: tuple[str, ...] = (
    "candidate_id",
    "generator",
    "seed",
    "params",
    "width",
    "height",
    "num_frames",
    "fps",
    "scores",
    "advantages",
)


def media_extension(modality: Modality, image_format: str) -> str:
    return VIDEO_EXTENSION if modality == "video" else image_format


def member_names(modality: Modality, image_format: str) -> tuple[str, ...]:
    """Member suffixes every sample of a shard folder carries, in write order."""
    ext = media_extension(modality, image_format)
    return ("json", "txt", f"win.{ext}", f"lose.{ext}")


def shard_name(split: str, index: int) -> str:
    return SHARD_PATTERN.format(split=split, index=index)


def sidecar_name(split: str, index: int) -> str:
    return SIDECAR_PATTERN.format(split=split, index=index)
