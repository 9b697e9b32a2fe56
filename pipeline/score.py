"""The score stage: every candidate through every reward model (decoded once, scored N times), plus
the video metrics, then the prompt group's statistics and group-relative advantages."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.stage import ActorStage
from schemas.tables import (
    COMBINED_ADVANTAGE,
    REWARD_MODEL_NAMES,
    VIDEO_METRIC_NAMES,
    raw_scores_schema,
    scores_schema,
)

# Reward models whose CLIP image tower gives the frame features for subject consistency, in preference order.
_FEATURE_MODELS = ("clipscore", "pickscore", "aesthetic")


def video_metrics_pool(pools: list[list[str]]) -> int:
    """Index of the actor pool that computes the video metrics: the one holding the preferred CLIP
    feature model, so subject consistency does not depend on how the models are grouped."""
    for name in _FEATURE_MODELS:
        for i, pool in enumerate(pools):
            if name in pool:
                return i
    return 0


def merge_raw_scores(tables: list[pa.Table], columns: list[str]) -> pa.Table:
    """Join the raw score tables of several actor pools on candidate_id (rows scored by all of them)."""
    keys = ["candidate_id", "prompt_id", "category", "modality"]
    merged = tables[0].to_pandas()
    for t in tables[1:]:
        merged = merged.merge(t.to_pandas(), on=keys, how="inner")
    schema = raw_scores_schema(columns)
    return pa.Table.from_pandas(merged.sort_values("candidate_id")[schema.names], schema=schema, preserve_index=False)


def score_names(reward_models: list[str]) -> list[str]:
    """Columns of the scores table: the reward models, then the video metrics."""
    return list(reward_models) + list(VIDEO_METRIC_NAMES)


@dataclass
class ScoreStage(ActorStage):
    """All configured reward models on one actor; a unit holds candidates of one modality."""

    models: list[tuple[str, str, str, dict]] = field(default_factory=list)  # (name, path or hub id, dtype, options)
    media_root: str = ""
    video_frames: int = 4
    video_metrics: bool = True  # one pool per build computes the temporal metrics
    name = "score"

    def setup(self) -> None:
        from reward_models.registry import load_reward_models

        self.loaded = load_reward_models(self.models, "cuda" if self.resources.num_gpus > 0 else "cpu")

    def process(self, tasks: list[dict[str, Any]]) -> pa.Table:
        from PIL import Image

        from pipeline.media import MediaStore, decode_image
        from reward_models.video import read_frames

        prompts = [t["prompt"] for t in tasks]
        store = MediaStore(self.media_root)
        blobs = [store.read(t["media_path"]) for t in tasks]
        cols: dict[str, Any] = {k: [t[k] for t in tasks] for k in ("prompt_id", "category", "modality")}
        cols["candidate_id"] = [t["id"] for t in tasks]
        if tasks[0]["modality"] == "video":
            clips = [read_frames(b, self.video_frames) for b in blobs]
            videos = [[Image.fromarray(f) for f in clip] for clip in clips]
            for name, model in self.loaded.items():
                cols[name] = model.score_video(videos, prompts)
            if self.video_metrics:
                metrics = [self._video_metrics(clip, frames) for clip, frames in zip(clips, videos)]
                for k in VIDEO_METRIC_NAMES:
                    cols[k] = [m.get(k) for m in metrics]
        else:
            images = [decode_image(b) for b in blobs]
            for name, model in self.loaded.items():
                cols[name] = model.score(images, prompts)
        schema = raw_scores_schema(self.columns())
        return pa.table({f.name: pa.array(cols.get(f.name, [None] * len(tasks)), type=f.type) for f in schema}, schema=schema)

    def columns(self) -> list[str]:
        """Score columns this stage emits (video metrics are null for images)."""
        names = [m[0] for m in self.models]
        return score_names(names) if self.video_metrics else names


    def _video_metrics(self, clip: np.ndarray, frames: list) -> dict[str, float]:
        """Temporal metrics; subject consistency on the CLIP image embeddings of a loaded CLIP scorer."""
        import torch

        from reward_models.video import video_metrics

        clip_model = next((self.loaded[n] for n in _FEATURE_MODELS if n in self.loaded), None)
        features = None
        if clip_model is not None:
            with torch.inference_mode():
                features = clip_model.image_embeds(frames).float().cpu().numpy()
        return video_metrics(clip, features)


def add_group_stats(raw: pa.Table, scorers: list[str]) -> pa.Table:
    """Per scorer: the prompt group's mean and (population) std, and (score - mean) / std; then the
    mean of the reward models' advantages (NaN when any of them is missing)."""
    df = raw.to_pandas()
    groups = df.groupby("prompt_id", sort=False)
    for s in scorers:
        mean = groups[s].transform("mean")
        std = groups[s].transform("std", ddof=0)  # vectorised; a Python lambda per group would crawl at 10M rows
        df[f"{s}_group_mean"] = mean
        df[f"{s}_group_std"] = std
        df[f"{s}_advantage"] = np.where(std > 0, (df[s] - mean) / std.where(std > 0, 1.0), 0.0)
        df.loc[df[s].isna(), f"{s}_advantage"] = np.nan
    rewards = [f"{s}_advantage" for s in scorers if s in REWARD_MODEL_NAMES]
    df[COMBINED_ADVANTAGE] = df[rewards].mean(axis=1, skipna=False) if rewards else np.nan
    schema = scores_schema(scorers)
    return pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)


