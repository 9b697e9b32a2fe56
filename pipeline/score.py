"""The score stage: every candidate through every reward model (decoded once, scored N times), plus
the video metrics; then, per category, the prompt groups' statistics and group-relative advantages.

Model units follow the candidates table's own units (consecutive generate units of one category,
about `batch_size * batches_per_unit` candidates), so they are fixed by the work alone. A candidate
whose media cannot be read, or on which a model fails alone, is a row with its reason.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from pipeline.catalogue import Table, UnitRecord, read_slices
from pipeline.errors import CORRUPT_MEDIA, ItemFailure
from pipeline.report import StageSummary
from pipeline.scoring import score_items
from pipeline.stage import ActorStage, StageInputError, TaskStage
from schemas.categories import modality_of
from schemas.config import ScoringConfig
from schemas.tables import (
    COMBINED_ADVANTAGE,
    REWARD_MODEL_NAMES,
    VIDEO_METRIC_NAMES,
    raw_scores_schema,
    scores_schema,
)
from schemas.units import Unit, make_unit

# Reward models whose CLIP image tower gives the frame features for subject consistency, in preference order.
_FEATURE_MODELS = ("clipscore", "pickscore", "aesthetic")
_KEYS = ["candidate_id", "prompt_id", "category", "modality"]


def video_metrics_pool(pools: list[list[str]]) -> int:
    """Index of the actor pool that computes the video metrics: the one holding the preferred CLIP
    feature model, so subject consistency does not depend on how the models are grouped."""
    for name in _FEATURE_MODELS:
        for i, pool in enumerate(pools):
            if name in pool:
                return i
    return 0


def merge_raw_scores(tables: list[pa.Table], columns: list[str]) -> pa.Table:
    """Join the raw score tables of several actor pools on candidate_id; a candidate missing from a
    pool keeps null scores there, and the first reason any pool gave."""
    schema = raw_scores_schema(columns)
    merged = tables[0].to_pandas()
    for i, t in enumerate(tables[1:]):
        merged = merged.merge(t.to_pandas(), on=_KEYS, how="outer", suffixes=("", f"__{i}"))
        other = f"reason__{i}"
        merged["reason"] = merged["reason"].where(merged["reason"].notna(), merged[other])
    for name in schema.names:
        if name not in merged:
            merged[name] = None
    return pa.Table.from_pandas(merged.sort_values("candidate_id")[schema.names], schema=schema, preserve_index=False)


def score_names(reward_models: list[str]) -> list[str]:
    """Columns of the scores table: the reward models, then the video metrics."""
    return list(reward_models) + list(VIDEO_METRIC_NAMES)


def plan_by_category(records: dict[str, UnitRecord], per_unit: int) -> list[tuple[str, list[UnitRecord]]]:
    """Consecutive upstream units of one category, in (category, id) order, grouped to about `per_unit`
    rows: the same groups whatever the files' layout."""
    groups: list[tuple[str, list[UnitRecord]]] = []
    for rec in sorted(records.values(), key=lambda r: (r.cluster or "", r.id)):
        if rec.rows == 0:
            continue
        cat = rec.cluster or ""
        if groups and groups[-1][0] == cat and sum(r.rows for r in groups[-1][1]) < per_unit:
            groups[-1][1].append(rec)
        else:
            groups.append((cat, [rec]))
    return groups


@dataclass
class ScoreStage(ActorStage):
    """The reward models of one actor pool; a unit holds candidates of one category."""

    models: list[tuple[str, str, str, dict]] = field(default_factory=list)  # (name, path or hub id, dtype, options)
    media_root: str = ""
    video_frames: int = 4
    video_metrics: bool = True  # one pool per build computes the temporal metrics
    candidates: Table | None = None
    prompts: Table | None = None
    raw: Table | None = None

    name: ClassVar[str] = "score"
    verb: ClassVar[str] = "scored"

    def outputs(self) -> tuple[Table, ...]:
        return (self.raw,)

    def plan(self) -> list[Unit]:
        recs = self.need(self.candidates, "generate")
        per_unit = self.resources.batch_size * self.resources.batches_per_unit
        spec = [(n, p, d, o) for n, p, d, o in self.models]
        return [
            make_unit("score", (spec, self.video_frames, self.video_metrics, [r.id for r in group]),
                      key=modality_of(cat), slices=tuple(r.slice for r in group), category=cat)
            for cat, group in plan_by_category(recs, per_unit)
        ]

    def setup(self) -> None:
        from reward_models.registry import load_reward_models

        self.loaded = load_reward_models(self.models, "cuda" if self.resources.num_gpus > 0 else "cpu")

    def _tasks(self, unit: Unit) -> list[dict[str, Any]]:
        cands = read_slices(unit.slices, [*_KEYS, "media_path", "status"])
        cands = cands.filter(pc.equal(cands["status"], "ok"))
        if not cands.num_rows:
            return []
        lo, hi = pc.min_max(cands["prompt_id"]).values()
        where = (ds.field("category") == unit.param("category")) & (ds.field("prompt_id") >= lo.as_py()) & (
            ds.field("prompt_id") <= hi.as_py())
        prompts = self.prompts.read(["prompt_id", "prompt"], filter=where)
        text = dict(zip(prompts["prompt_id"].to_pylist(), prompts["prompt"].to_pylist()))
        tasks = []
        for row in cands.to_pylist():
            if row["prompt_id"] not in text:
                raise StageInputError(
                    f"prompt id {row['prompt_id']} of candidate {row['candidate_id']} is not in {self.prompts.folder}: "
                    "was the config's prompt set changed after generate? use a new output_dir"
                )
            tasks.append({"id": row["candidate_id"], **{k: row[k] for k in _KEYS[1:]}, "media_path": row["media_path"],
                          "prompt": text[row["prompt_id"]]})
        return sorted(tasks, key=lambda t: t["id"])

    def process(self, unit: Unit | list[dict[str, Any]]) -> pa.Table:
        tasks = self._tasks(unit) if isinstance(unit, Unit) else unit
        bs = self.resources.batch_size
        tables = [self._score_batch(tasks[i : i + bs]) for i in range(0, len(tasks), bs)]
        schema = raw_scores_schema(self.columns())
        out = pa.concat_tables(tables) if tables else schema.empty_table()
        self.count(n_in=len(tasks), n_out=int(pc.sum(pc.is_null(out["reason"])).as_py() or 0))
        return out

    def _decode(self, task: dict) -> Any:
        from PIL import Image

        from pipeline.media import MediaStore, decode_image
        from reward_models.video import read_frames, read_video

        try:
            data = MediaStore(self.media_root).read(task["media_path"])
            if task["modality"] == "video":
                clip = read_video(data, self.video_frames) if self.video_metrics else read_frames(data, self.video_frames)
                return clip, [Image.fromarray(f) for f in clip]
            return decode_image(data)
        except Exception as err:
            return ItemFailure.of(task["id"], err, CORRUPT_MEDIA)

    def _score_batch(self, tasks: list[dict[str, Any]]) -> pa.Table:
        media = [self._decode(t) for t in tasks]
        ok = [i for i, m in enumerate(media) if not isinstance(m, ItemFailure)]
        failure: list[ItemFailure | None] = [m if isinstance(m, ItemFailure) else None for m in media]
        cols: dict[str, list] = {}
        video = bool(tasks) and tasks[0]["modality"] == "video"
        scored = score_items(self.loaded, [media[i][1] if video else media[i] for i in ok], [tasks[i]["prompt"] for i in ok],
                             video=video, ids=[tasks[i]["id"] for i in ok])
        for name, results in scored.items():
            vals: list = [None] * len(tasks)
            for i, v in zip(ok, results):
                if isinstance(v, ItemFailure):
                    failure[i] = failure[i] or v
                else:
                    vals[i] = v
            cols[name] = vals
        if video and self.video_metrics:
            metrics = [self._video_metrics(*media[i]) if failure[i] is None else {} for i in range(len(tasks))]
            for k in VIDEO_METRIC_NAMES:
                cols[k] = [m.get(k) for m in metrics]
        for f in failure:
            if f is not None:
                self.fail(f)
        cols.update({k: [t[k] for t in tasks] for k in _KEYS[1:]})
        cols["candidate_id"] = [t["id"] for t in tasks]
        cols["reason"] = [None if f is None else f.reason for f in failure]
        for name in cols:
            if failure and name in self.loaded:
                cols[name] = [None if f is not None else v for v, f in zip(cols[name], failure)]
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
    if "reason" not in df:
        df["reason"] = None
    schema = scores_schema(scorers)
    return pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)


@dataclass
class ScoreStatsStage(TaskStage):
    """Per category: the pools' raw scores joined, with each prompt group's statistics (whole groups:
    a prompt belongs to one category)."""

    raws: tuple[Table, ...] = ()
    scores: Table | None = None
    score_cols: tuple[str, ...] = ()

    name: ClassVar[str] = "score"
    verb: ClassVar[str] = "grouped"

    def outputs(self) -> tuple[Table, ...]:
        return (self.scores,)

    def plan(self) -> list[Unit]:
        by_cat: dict[str, list[str]] = {}
        rows: dict[str, int] = {}
        for gi, raw in enumerate(self.raws):
            for rec in raw.records().values():
                if rec.cluster is not None:
                    by_cat.setdefault(rec.cluster, []).append(f"{gi}:{rec.id}")
                    rows[rec.cluster] = rows.get(rec.cluster, 0) + (rec.rows if gi == 0 else 0)
        return [make_unit("score_stats", (cat, list(self.score_cols), sorted(ids)), key=cat, rows=rows[cat], category=cat)
                for cat, ids in sorted(by_cat.items())]

    def process(self, unit: Unit) -> pa.Table:
        cat = unit.param("category")
        tables = [raw.read(filter=ds.field("category") == cat) for raw in self.raws]
        merged = merge_raw_scores(tables, list(self.score_cols))
        out = add_group_stats(merged, list(self.score_cols))
        self.count(n_in=out.num_rows, n_out=int(pc.sum(pc.is_null(out["reason"])).as_py() or 0))
        return out


def run_scoring(executor, catalogue, scoring: ScoringConfig, model_path: Callable, score_stage: type[ScoreStage], *,
                media_root: str, columnar: Callable[[TaskStage], TaskStage]) -> StageSummary:
    """The score step of a graph (a build's, an eval's): one `score_stage` per actor pool of
    `scoring`, each into its raw table `scores_raw/group-<i>`, then the pools joined per category into
    `scores`. Reads the catalogue's `candidates` and `prompts`; `model_path(reward model config)` is
    where each checkpoint comes from."""
    groups = scoring.model_groups()
    metrics_pool = video_metrics_pool([[r.name for r in g] for g, _ in groups])
    raws, summaries = [], []
    for gi, (group, resources) in enumerate(groups):
        cols = score_names([r.name for r in group]) if gi == metrics_pool else [r.name for r in group]
        raw = catalogue.table(f"scores_raw/group-{gi}", raw_scores_schema(cols), cluster_by="category")
        stage = score_stage(
            resources=resources, models=[(r.name, model_path(r), r.dtype, r.options) for r in group],
            media_root=media_root, video_frames=scoring.video_frames, video_metrics=gi == metrics_pool,
            candidates=catalogue.table("candidates"), prompts=catalogue.table("prompts"), raw=raw,
        )
        summaries.append(executor.run(stage))
        raws.append(raw)
    score_cols = score_names([r.name for r in scoring.reward_models])
    stats = columnar(ScoreStatsStage(raws=tuple(raws), scores=catalogue.table("scores"), score_cols=tuple(score_cols)))
    grouped = executor.run(stats)
    summary = combine_summaries("score", summaries, "scored")
    summary.n_out, summary.seconds = grouped.n_out, summary.seconds + grouped.seconds
    return summary


def combine_summaries(step: str, summaries: list[StageSummary], verb: str, keep_all: bool = False) -> StageSummary:
    """One line for a step run as several stages: generators partition the work (counts add up),
    score pools each see every candidate (the first pool's counts; failures of every pool)."""
    out = StageSummary(step)
    for i, s in enumerate(summaries):
        if keep_all or i == 0:
            out.n_in += s.n_in
            out.n_out += s.n_out
            out.now += s.now
            out.before += s.before
        for k, v in s.dropped.items():
            out.dropped[k] = out.dropped.get(k, 0) + v
        out.seconds += s.seconds
        out.units += s.units
        out.units_run += s.units_run
    out.recount(verb)
    return out
