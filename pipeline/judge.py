"""The judge stage: the VLM rater asked about the pairs that passed the reward-model rule.

Each task is one kept pair. The winner is shown first in the first order (candidate "a"), so the
rater's swap-debiased P(a better) is P(winner better): a low value means the VLM disagrees with the
reward models. `judge_keeps` turns the judgements into keep / drop decisions with reasons; the
driver (pipeline/build.py) wires both, as any other stage.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.stage import ActorStage
from schemas.config import JudgeConfig
from schemas.tables import JUDGEMENTS

DROP_DISAGREES = "vlm_disagrees"
DROP_POSITION_INCONSISTENT = "vlm_position_inconsistent"

# What `judge_keeps` returns: one row per judged pair.
JUDGE_KEEPS = pa.schema([("pair_id", pa.string()), ("kept", pa.bool_()), ("drop_reason", pa.string())])


def rater_model_path(cfg: JudgeConfig, cache_dir: str | Path) -> str:
    """What `JudgeStage.model_path` should be: the served model name (openai), the hub id or local
    folder (transformers, vllm), or for `model: tiny` the folder of the toy rater, built once in the cache."""
    if cfg.backend == "openai" or cfg.model != "tiny":
        return cfg.model
    from pipeline.models import materialise_tiny
    from reward_models.vlm import tiny

    return materialise_tiny("rater", "qwen2vl", 0, lambda folder: tiny.save_tiny_rater(folder, seed=0), tiny, Path(cache_dir))


@dataclass
class JudgeStage(ActorStage):
    """The VLM rater on one actor; a unit holds pairs of one modality.

    Task keys: id (pair_id), prompt, category, modality, winner_path, loser_path (media paths
    relative to `media_root`)."""

    cfg: JudgeConfig
    model_path: str
    media_root: str
    name = "judge"

    def setup(self) -> None:
        from reward_models.vlm.rater import VLMRater

        device = "cuda" if self.resources.num_gpus > 0 else "cpu"
        self.rater = VLMRater.from_config(self.cfg, self.model_path, device=device)

    def _media(self, rel_path: str, modality: str) -> list:
        from PIL import Image

        from pipeline.media import MediaStore, decode_image, read_video_frames

        data = MediaStore(self.media_root).read(rel_path)
        if modality == "video":
            return [Image.fromarray(f) for f in read_video_frames(data, self.cfg.video_frames)]
        return [decode_image(data)]

    def process(self, tasks: list[dict[str, Any]]) -> pa.Table:
        from reward_models.vlm.prompting import PairQuery

        pairs = [
            PairQuery(
                pair_id=t["id"],
                prompt=t["prompt"],
                category=t["category"],
                media_a=self._media(t["winner_path"], t["modality"]),
                media_b=self._media(t["loser_path"], t["modality"]),
            )
            for t in tasks
        ]
        judgements = self.rater.rate(pairs)
        return pa.table(
            {
                "pair_id": [j.pair_id for j in judgements],
                "rater": [self.rater.name] * len(judgements),
                "p_winner": [j.p_first for j in judgements],
                "p_winner_first": [j.p_ab for j in judgements],  # winner shown as A: P(A | w, l)
                "p_winner_second": [j.p_first_when_second for j in judgements],  # winner shown as B: 1 - P(A | l, w)
                "position_consistency": [j.position_consistency for j in judgements],
            },
            schema=JUDGEMENTS,
        )


def judge_keeps(judgements: pa.Table, cfg: JudgeConfig) -> pa.Table:
    """Keep / drop per judged pair (schema `JUDGE_KEEPS`): kept when p_winner >= min_probability and
    position_consistency >= min_position_consistency. Drop reasons: `vlm_disagrees` (p_winner too
    low, or missing) first, else `vlm_position_inconsistent`."""
    pair_ids = judgements.column("pair_id").to_pylist()
    p = judgements.column("p_winner").to_pylist()
    c = judgements.column("position_consistency").to_pylist()
    # Compare in float32, the stored precision, so a threshold equal to a stored value keeps it.
    p_min = float(pa.scalar(cfg.min_probability, pa.float32()).as_py())
    c_min = float(pa.scalar(cfg.min_position_consistency, pa.float32()).as_py())
    kept, reasons = [], []
    for pw, pc in zip(p, c):
        if pw is None or not pw >= p_min:
            kept.append(False)
            reasons.append(DROP_DISAGREES)
        elif pc is None or not pc >= c_min:
            kept.append(False)
            reasons.append(DROP_POSITION_INCONSISTENT)
        else:
            kept.append(True)
            reasons.append(None)
    return pa.table({"pair_id": pair_ids, "kept": kept, "drop_reason": reasons}, schema=JUDGE_KEEPS)
