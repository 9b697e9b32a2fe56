"""How much disk a build will take, from its config alone, checked before the first stage
(docs/reliability.md, "Kill and disk full").

An estimate, on the generous side: encoded bytes per pixel for generated images at vipo's encoder
settings (JPEG / WebP at quality 95, PNG), per pixel per frame for H.264 video, plus each
candidate's rows in the tables, plus the shards (the selected pairs' media copied into tars).
Only a fresh build is checked: on a rerun part of it is on disk already, and a full disk mid-build
is caught anyway (one line, nothing lost).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from schemas.categories import modality_of
from schemas.config import BuildConfig
from schemas.errors import VipoError

IMAGE_BYTES_PER_PIXEL = {"jpg": 0.5, "webp": 0.4, "png": 2.0}
VIDEO_BYTES_PER_PIXEL_FRAME = 0.15
TABLE_BYTES_PER_CANDIDATE = 2_000  # candidates, scores, pairs, judgements: a few hundred bytes each, zstd
DEFAULT_SIDE = 1024  # when neither the registry nor the config names a size


class NotEnoughSpace(VipoError):
    """The disk under the build folder cannot hold the build the config describes."""


def estimate_build_bytes(cfg: BuildConfig, specs: dict) -> int:
    """Media, tables and shards of the whole build, in bytes."""
    total, media_per_pair = 0.0, []
    for g in cfg.generators:
        spec = specs[g.name]
        cats = [c for c in cfg.categories if modality_of(c) == spec.modality and (g.categories is None or c in g.categories)]
        prompts = sum(cfg.categories[c].prompts for c in cats)
        for sampling in g.sampling:
            params = {**spec.call_kwargs, **sampling}
            pixels = params.get("height", DEFAULT_SIDE) * params.get("width", DEFAULT_SIDE)
            if spec.modality == "video":
                per = pixels * params.get("num_frames", 81) * VIDEO_BYTES_PER_PIXEL_FRAME
            else:
                per = pixels * IMAGE_BYTES_PER_PIXEL[cfg.media.image_format]
            total += prompts * g.seeds_per_prompt * (per + TABLE_BYTES_PER_CANDIDATE)
            media_per_pair.append(2 * per)
    pairs = sum(q.quota for q in cfg.categories.values())
    total += pairs * (max(media_per_pair) if media_per_pair else 0)
    return int(total)


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_space(cfg: BuildConfig, specs: dict, out: Path) -> None:
    """NotEnoughSpace when a fresh build's estimate exceeds the free space under `out`."""
    media = cfg.media.root
    if (out / "candidates").exists() or (media and "://" in media):
        return  # a rerun, or media on object storage
    need = estimate_build_bytes(cfg, specs)
    free = shutil.disk_usage(_existing(out)).free
    if need > free:
        raise NotEnoughSpace(
            f"{out}: the build needs about {_size(need)} of disk (media, tables, shards; estimated from the "
            f"config), {_size(free)} are free; free some, choose another --out, or pass --skip-space-check"
        )


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
