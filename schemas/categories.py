"""The eight preference categories: one fixed name each, used everywhere (docs/prompts.md lists them)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Modality = Literal["image", "video"]


@dataclass(frozen=True)
class Category:
    name: str
    modality: Modality
    rubric: str  # what the winner is better at; also the VLM rater's question


CATEGORIES: dict[str, Category] = {
    c.name: c
    for c in (
        Category("aesthetics", "image", "beauty, lighting, colour and style"),
        Category("composition", "image", "layout, counting, spatial relations and attribute binding"),
        Category("text_image_alignment", "image", "faithfulness to every part of the prompt"),
        Category("text_rendering", "image", "legible, correctly spelled text that the prompt asks for"),
        Category("portrait_quality", "image", "faces, hands, anatomy and skin"),
        Category("motion_quality", "video", "plausible, smooth, physically sensible motion"),
        Category("visual_quality", "video", "sharpness, no flicker or artefacts, consistency over time"),
        Category("video_text_alignment", "video", "showing what the prompt asks, in order"),
    )
}

IMAGE_CATEGORIES = tuple(n for n, c in CATEGORIES.items() if c.modality == "image")
VIDEO_CATEGORIES = tuple(n for n, c in CATEGORIES.items() if c.modality == "video")
MODALITIES: tuple[Modality, ...] = ("image", "video")


def modality_of(category: str) -> Modality:
    try:
        return CATEGORIES[category].modality
    except KeyError:
        raise ValueError(f"unknown category {category!r}; expected one of {sorted(CATEGORIES)}") from None
