"""The batch contract between the trainer's data (`trainer/data*.py`) and its loop (`trainer/loop.py`).

A batch is a stack of preference pairs whose winner and loser were resized and cropped *jointly*
(same box), so the only difference the loss sees is the one the rater judged. Each pair may carry
the winner's size before resizing and the crop's top-left corner in the resized image (what SDXL's
time ids condition on, as diffusers' `train_diffusion_dpo_sdxl.py` records them).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor


@dataclass
class PairBatch:
    """`pixels_w` / `pixels_l`: float32 in [-1, 1], (B, 3, H, W) for images or (B, 3, F, H, W) for video.

    `original_sizes` ((height, width) before resizing) and `crop_top_lefts` ((top, left) of the crop):
    one per pair, or None for pixels that are already at their native size, uncropped.
    """

    pixels_w: Tensor
    pixels_l: Tensor
    prompts: list[str]
    categories: list[str]
    pair_ids: list[str]
    original_sizes: list[tuple[int, int]] | None = None
    crop_top_lefts: list[tuple[int, int]] | None = None

    def __post_init__(self) -> None:
        if self.pixels_w.shape != self.pixels_l.shape:
            raise ValueError(f"winner and loser pixels differ in shape: {tuple(self.pixels_w.shape)} vs {tuple(self.pixels_l.shape)}")
        if self.pixels_w.ndim not in (4, 5) or self.pixels_w.shape[1] != 3:
            raise ValueError(f"pixels must be (B, 3, H, W) or (B, 3, F, H, W), got {tuple(self.pixels_w.shape)}")
        n = self.pixels_w.shape[0]
        if not (len(self.prompts) == len(self.categories) == len(self.pair_ids) == n):
            raise ValueError(f"batch of {n} pairs has {len(self.prompts)} prompts, {len(self.categories)} categories, {len(self.pair_ids)} ids")
        for name in ("original_sizes", "crop_top_lefts"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"batch of {n} pairs has {len(value)} {name}")

    def __len__(self) -> int:
        return self.pixels_w.shape[0]

    @property
    def is_video(self) -> bool:
        return self.pixels_w.ndim == 5

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> PairBatch:
        return replace(self, pixels_w=self.pixels_w.to(device, dtype), pixels_l=self.pixels_l.to(device, dtype))

    @staticmethod
    def collate(items: list[dict]) -> PairBatch:
        """Stack per-pair dicts with keys pixels_w, pixels_l (3,H,W) or (3,F,H,W), prompt, category, pair_id,
        and optionally original_size and crop_top_left (all items or none)."""
        def column(key: str) -> list[tuple[int, int]] | None:
            return [tuple(i[key]) for i in items] if all(key in i for i in items) else None

        return PairBatch(
            torch.stack([i["pixels_w"] for i in items]),
            torch.stack([i["pixels_l"] for i in items]),
            [i["prompt"] for i in items],
            [i["category"] for i in items],
            [i["pair_id"] for i in items],
            column("original_size"),
            column("crop_top_left"),
        )
