"""The judge stage: the VLM rater asked about the pairs that passed the reward-model rule.

Each task is one kept pair. The winner is shown first in the first order (candidate "a"), so the
rater's swap-debiased P(a better) is P(winner better): a low value means the VLM disagrees with the
reward models. Units are row ranges of the kept prefix of each category's pairs (the pair stage
writes kept pairs first). A pair whose media cannot be read, or for which the rater gives neither
label, is a row with its reason; the select stage turns judgements into keep / drop decisions.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from pipeline.catalogue import Table, read_slices
from pipeline.errors import CORRUPT_MEDIA, VLM_NO_LABEL, ItemFailure, batch_then_each
from pipeline.stage import ActorStage, StageInputError
from schemas.config import JudgeConfig
from schemas.tables import JUDGEMENTS
from schemas.units import Slice, Unit, make_unit


def rater_model_path(cfg: JudgeConfig, cache_dir: str | Path, words: tuple[str, ...] = ()) -> str:
    """What `JudgeStage.model_path` should be: the served model name (openai), the hub id or local
    folder (transformers, vllm), or for `model: tiny` the folder of the toy rater, built once in the
    cache (`words`: extra single-token words its vocabulary needs, e.g. the alignment's Yes / No)."""
    if cfg.backend == "openai" or cfg.model != "tiny":
        return cfg.model
    from pipeline.models import materialise_tiny
    from reward_models.vlm import tiny

    name = "qwen2vl" + "".join(f"-{w.lower()}" for w in words)
    return materialise_tiny("rater", name, 0, lambda folder: tiny.save_tiny_rater(folder, seed=0, words=words), tiny, Path(cache_dir))


def rater_media(media_root: str, rel_path: str | None, modality: str, video_frames: int) -> list:
    """What the VLM is shown of one candidate: its image, or `video_frames` frames of its video (PIL, in order)."""
    from PIL import Image

    from pipeline.media import MediaStore, decode_image, read_video_frames

    if rel_path is None:
        raise FileNotFoundError("the candidate has no media path in the candidates table")
    data = MediaStore(media_root).read(rel_path)
    if modality == "video":
        return [Image.fromarray(f) for f in read_video_frames(data, video_frames)]
    return [decode_image(data)]


@dataclass
class JudgeStage(ActorStage):
    """The VLM rater on one actor; a unit holds kept pairs of one category.

    Task keys: id (pair_id), prompt, category, modality, winner_path, loser_path (media paths
    relative to `media_root`)."""

    cfg: JudgeConfig | None = None
    model_path: str = ""
    media_root: str = ""
    pairs: Table | None = None
    candidates: Table | None = None
    prompts: Table | None = None
    judgements: Table | None = None

    name: ClassVar[str] = "judge"
    verb: ClassVar[str] = "judged"

    def outputs(self) -> tuple[Table, ...]:
        return (self.judgements,)

    def plan(self) -> list[Unit]:
        recs = self.need(self.pairs, "pair")
        c = self.cfg
        rater = (c.backend, self.model_path, c.dtype, c.image_size, c.video_frames)
        step = self.resources.batch_size * self.resources.batches_per_unit
        units = []
        for rec in sorted(recs.values(), key=lambda r: (r.cluster or "", r.id)):
            kept = int(rec.unit_stats.extra.get("kept", 0))
            for a in range(0, kept, step):
                b = min(a + step, kept)
                units.append(make_unit("judge", (rater, rec.id, a, b), key=rec.cluster or "",
                                       slices=(Slice(rec.path, rec.offset + a, rec.offset + b),), category=rec.cluster))
        return units

    def setup(self) -> None:
        from reward_models.vlm.rater import VLMRater

        device = "cuda" if self.resources.num_gpus > 0 else "cpu"
        self.rater = VLMRater.from_config(self.cfg, self.model_path, device=device)

    def _tasks(self, unit: Unit) -> list[dict[str, Any]]:
        pairs = read_slices(unit.slices, ["pair_id", "prompt_id", "category", "modality", "winner_id", "loser_id", "kept"])
        pairs = pairs.filter(pairs["kept"])
        if not pairs.num_rows:
            return []
        cat = unit.param("category")
        ids = pa.concat_arrays([pairs["winner_id"].combine_chunks(), pairs["loser_id"].combine_chunks()])
        media = self.candidates.read(["candidate_id", "media_path"],
                                     filter=(ds.field("category") == cat) & ds.field("candidate_id").isin(ids))
        lo, hi = pc.min_max(pairs["prompt_id"]).values()
        prompts = self.prompts.read(["prompt_id", "prompt"], filter=(ds.field("category") == cat) & (
            ds.field("prompt_id") >= lo.as_py()) & (ds.field("prompt_id") <= hi.as_py()))
        where = dict(zip(media["candidate_id"].to_pylist(), media["media_path"].to_pylist()))
        text = dict(zip(prompts["prompt_id"].to_pylist(), prompts["prompt"].to_pylist()))
        tasks = []
        for r in pairs.to_pylist():
            if r["prompt_id"] not in text:
                raise StageInputError(f"prompt id {r['prompt_id']} of pair {r['pair_id']} is not in {self.prompts.folder}: "
                                      "was the config's prompt set changed after pair? use a new output_dir")
            tasks.append({"id": r["pair_id"], "prompt": text[r["prompt_id"]], "category": r["category"],
                          "modality": r["modality"], "winner_path": where.get(r["winner_id"]), "loser_path": where.get(r["loser_id"])})
        return tasks

    def _media(self, rel_path: str | None, modality: str) -> list:
        return rater_media(self.media_root, rel_path, modality, self.cfg.video_frames)

    def process(self, unit: Unit | list[dict[str, Any]]) -> pa.Table:
        from reward_models.vlm.prompting import PairQuery, RaterAnswerError

        tasks = self._tasks(unit) if isinstance(unit, Unit) else unit
        results: list[Any] = [None] * len(tasks)
        queries: dict[int, PairQuery] = {}
        for i, t in enumerate(tasks):
            try:
                queries[i] = PairQuery(pair_id=t["id"], prompt=t["prompt"], category=t["category"],
                                       media_a=self._media(t["winner_path"], t["modality"]),
                                       media_b=self._media(t["loser_path"], t["modality"]))
            except Exception as err:
                results[i] = ItemFailure.of(t["id"], err, CORRUPT_MEDIA)
        order = list(queries)
        bs = self.resources.batch_size
        for s in range(0, len(order), bs):
            idx = order[s : s + bs]
            answers = batch_then_each(idx, lambda ii: self.rater.rate_each([queries[i] for i in ii]), lambda i: tasks[i]["id"])
            for i, a in zip(idx, answers):
                if isinstance(a, RaterAnswerError):
                    a = ItemFailure.of(tasks[i]["id"], a, VLM_NO_LABEL)
                elif isinstance(a, Exception):
                    a = ItemFailure.of(tasks[i]["id"], a)
                results[i] = a
        rows = []
        for t, r in zip(tasks, results):
            row = {"pair_id": t["id"], "category": t["category"], "rater": self.rater.name}
            if isinstance(r, ItemFailure):
                self.fail(r)
                rows.append({**row, "reason": r.reason})
            else:
                rows.append({**row, "p_winner": r.p_first, "p_winner_first": r.p_ab,  # winner shown as A: P(A | w, l)
                             "p_winner_second": r.p_first_when_second,  # winner shown as B: 1 - P(A | l, w)
                             "position_consistency": r.position_consistency, "reason": None})
        self.count(n_in=len(tasks), n_out=sum(not isinstance(r, ItemFailure) for r in results))
        return pa.Table.from_pylist(rows, schema=JUDGEMENTS)
