"""The reward models' one scoring loop, shared by the build's score stage and the audit's: every
loaded model on every item (an image, or a video's sampled frames) in one call per model, and an item
that a model fails on alone returned as its `ItemFailure` (the batch is retried item by item)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.errors import ItemFailure, batch_then_each


def score_items(models: dict[str, Any], media: Sequence[Any], prompts: Sequence[str], *, video: bool,
                ids: Sequence[str]) -> dict[str, list[float | ItemFailure]]:
    """Per model name, one score (float) or ItemFailure per item, in order."""
    out: dict[str, list[float | ItemFailure]] = {}
    items = list(range(len(media)))
    for name, model in models.items():
        fn = model.score_video if video else model.score

        def run(idx: Sequence[int], fn=fn) -> list[float]:
            return [float(v) for v in fn([media[i] for i in idx], [prompts[i] for i in idx])]

        out[name] = batch_then_each(items, run, lambda i: ids[i])
    return out
