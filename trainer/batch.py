"""The batch contract between the trainer's data (`trainer/data*.py`) and its loop (`trainer/loop.py`).

A batch is a stack of preference pairs whose winner and loser were resized and cropped *jointly*
(same box), so the only difference the loss sees is the one the rater judged.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class PairBatch:
    """`pixels_w` / `pixels_l`: float32 in [-1, 1], (B, 3, H, W) for images or (B, 3, F, H, W) for video."""

    pixels_w: Tensor
    pixels_l: Tensor
    prompts: list[str]
    categories: list[str]
    pair_ids: list[str]

    def __post_init__(self) -> None:
        if self.pixels_w.shape != self.pixels_l.shape:
            raise ValueError(f"winner and loser pixels differ in shape: {tuple(self.pixels_w.shape)} vs {tuple(self.pixels_l.shape)}")
        if self.pixels_w.ndim not in (4, 5) or self.pixels_w.shape[1] != 3:
            raise ValueError(f"pixels must be (B, 3, H, W) or (B, 3, F, H, W), got {tuple(self.pixels_w.shape)}")
        n = self.pixels_w.shape[0]
        if not (len(self.prompts) == len(self.categories) == len(self.pair_ids) == n):
            raise ValueError(f"batch of {n} pairs has {len(self.prompts)} prompts, {len(self.categories)} categories, {len(self.pair_ids)} ids")

    def __len__(self) -> int:
        return self.pixels_w.shape[0]

    @property
    def is_video(self) -> bool:
        return self.pixels_w.ndim == 5

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> PairBatch:
        return PairBatch(
            self.pixels_w.to(device, dtype), self.pixels_l.to(device, dtype), self.prompts, self.categories, self.pair_ids
        )

    @staticmethod
    def collate(items: list[dict]) -> PairBatch:
        """Stack per-pair dicts with keys pixels_w, pixels_l (3,H,W) or (3,F,H,W), prompt, category, pair_id."""
        return PairBatch(
            torch.stack([i["pixels_w"] for i in items]),
            torch.stack([i["pixels_l"] for i in items]),
            [i["prompt"] for i in items],
            [i["category"] for i in items],
            [i["pair_id"] for i in items],
        )
