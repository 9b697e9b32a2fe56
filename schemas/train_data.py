"""Typed configuration of the trainer's data: where preference pairs come from and how they are cut.

Embedded as `data` in the train config (`schemas/train_config.py`); consumed by
`trainer.data.build_loader`. Strict like every config here: unknown keys and wrong types fail.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from schemas.categories import CATEGORIES, Modality
from schemas.config import Strict

#: Category recorded for Pick-a-Pic pairs, which carry none of the eight (general human preference).
PICKAPIC_CATEGORY = "pickapic"


class TrainDataConfig(Strict):
    source: Literal["shards", "pickapic"] = Field(
        "shards", description="shards: our WebDataset tars; pickapic: Pick-a-Pic v2 style parquet files."
    )
    paths: list[str] = Field(
        min_length=1,
        description="Files, folders (searched recursively for *.tar / *.parquet) or glob patterns; sorted, deduplicated.",
    )
    modality: Modality = Field(
        "image", description="Keep pairs of this modality only (a batch is all images or all videos); others are skipped."
    )
    resolution: int = Field(512, ge=8, description="Side of the square crop fed to the model (px); the short side is resized to it.")
    num_frames: int = Field(8, ge=1, description="Video: frames sampled evenly over the clip (same indices for winner and loser).")
    random_crop: bool = Field(
        False, description="Crop a random square (one box for winner and loser); False takes the centre square."
    )
    random_flip: bool = Field(False, description="Flip horizontally with probability 0.5, winner and loser together.")
    shuffle_shards: bool = Field(True, description="Shuffle the order of shards / parquet files each epoch (seeded).")
    shuffle_buffer: int = Field(
        1000, ge=0, description="Pairs held in the seeded shuffle buffer (0: read in file order). Holds locations, not pixels."
    )
    category_weights: dict[str, float] = Field(
        default_factory=dict,
        description="Sampling weight per category (e.g. {motion_quality: 2}); categories not named keep weight 1, "
        "weight 0 drops a category. Empty: the data's own mix.",
    )
    epochs: int | None = Field(None, ge=1, description="Passes over the data; None streams forever (the loop counts steps).")
    seed: int = Field(0, description="Seed of shard order, shuffle buffer, category sampling, crops and flips.")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes (shards are split between them).")
    max_pixels: int = Field(
        64_000_000, ge=1, description="Refuse images (and video frames) over this many pixels, checked before decoding."
    )
    drop_ties: bool = Field(
        True, description="Pick-a-Pic: skip tied rows (label_0 = 0.5); False makes a tie an error (data that must have none)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> TrainDataConfig:
        for name, weight in self.category_weights.items():
            if name not in CATEGORIES:
                raise ValueError(f"category_weights: unknown category {name!r}; expected one of {list(CATEGORIES)}")
            if CATEGORIES[name].modality != self.modality:
                raise ValueError(f"category_weights: {name!r} is a {CATEGORIES[name].modality} category but modality is {self.modality!r}")
            if not weight >= 0 or weight == float("inf"):
                raise ValueError(f"category_weights: {name!r} has weight {weight}; expected a finite number >= 0")
        if self.category_weights and self.source == "pickapic":
            raise ValueError("category_weights: Pick-a-Pic pairs carry no category; leave it empty for source 'pickapic'")
        if self.source == "pickapic" and self.modality != "image":
            raise ValueError("modality: Pick-a-Pic holds images only")
        return self

    def weight_of(self, category: str) -> float:
        """Sampling weight of a category (1 when not named)."""
        return self.category_weights.get(category, 1.0)
