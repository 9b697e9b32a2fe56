"""The eval's own stages; everything else is the build's (generate, score, judge) on the eval's tables.

    prompts -> generate (one actor pool per model, shared seeds) -> score -> pairs -> judge -> alignment

`EvalPromptsStage` writes the prompts table with the build's per-category row index, so the build's
generate stage plans from it unchanged. `EvalPairsStage` pairs every candidate image with the base
image of the same prompt and seed, winner = candidate, so the build's judge stage reads
P(candidate better) as its `p_winner`. `AlignmentStage` asks the same VLM the VQAScore question once
per image or video.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from pipeline.catalogue import Table, read_slices
from pipeline.errors import CORRUPT_MEDIA, VLM_NO_LABEL, ItemFailure, batch_then_each
from pipeline.eval.models import EvalModel, apply_weights
from pipeline.generate import GenerateStage
from pipeline.judge import rater_media
from pipeline.prompt_stage import category_index
from pipeline.score import plan_by_category
from pipeline.stage import ActorStage, StageInputError, TaskStage
from pipeline.store import concat, dedupe_sorted, file_sha256
from schemas.config import JudgeConfig
from schemas.config_io import ConfigError
from schemas.eval_config import EvalPromptsConfig
from schemas.ids import pair_id
from schemas.tables import ALIGNMENT, PROMPTS, pairs_schema
from schemas.units import Unit, make_unit

EVAL_PAIRS = pairs_schema([])  # the pairs table's columns without margins: winner = candidate, loser = base
SEED_KEY = "vipo-eval"  # every model's seeds derive from (prompt, this, k): the same seeds for all


# --------------------------------------------------------------------------------------------- prompts


def _sample(table: pa.Table, n: int, seed: int) -> pa.Table:
    """At most `n` rows, a seeded sample that does not depend on the rows' order."""
    if table.num_rows <= n:
        return table
    keys = [hashlib.sha256(f"{seed}\x1f{p}".encode()).hexdigest() for p in table["prompt_id"].to_pylist()]
    return table.take(np.argsort(np.array(keys), kind="stable")[:n])


@dataclass
class EvalPromptsStage(TaskStage):
    """The eval's prompt set (held-out library split, prompt files, or a built dataset's split)."""

    cfg: EvalPromptsConfig | None = None
    prompts: Table | None = None
    source: str = "<config>"

    name: ClassVar[str] = "prompts"
    verb: ClassVar[str] = "chosen"

    def outputs(self) -> tuple[Table, ...]:
        return (self.prompts,)

    def _identity(self) -> list:
        c = self.cfg
        ident: list = [c.model_dump(mode="json")]
        if c.source == "file":
            ident.append([file_sha256(f) for f in c.files])
        elif c.source == "dataset":
            ident.append(sorted(Table(f"{c.dataset}/selected", pa.schema([])).records()))
        return ident

    def plan(self) -> list[Unit]:
        return [make_unit("eval_prompts", tuple(self._identity()), rows=sum(self.cfg.categories.values()))]

    def process(self, unit: Unit) -> pa.Table:
        c = self.cfg
        if c.source == "held_out":
            from pipeline.prompts import held_out_prompts

            table = held_out_prompts(dict(c.categories), c.seed)
        else:
            table = self._from_files() if c.source == "file" else self._from_dataset()
            if c.categories:
                table = table.filter(pc.is_in(table["category"], pa.array(list(c.categories))))
                parts = [_sample(table.filter(pc.equal(table["category"], cat)), n, c.seed) for cat, n in c.categories.items()]
                table = concat(parts, PROMPTS)
        table = dedupe_sorted(concat([table], PROMPTS), "prompt_id")
        table = table.take(pc.sort_indices(table, [("category", "ascending"), ("prompt_id", "ascending")]))
        if not table.num_rows:
            raise ConfigError(f"{self.source}: prompts: the {c.source} source gives no prompts")
        self.count(n_in=table.num_rows, n_out=table.num_rows)
        self.stats.extra = category_index(table)
        return table

    def _from_files(self) -> pa.Table:
        from pipeline.prompts import load_prompt_files

        loaded = load_prompt_files(list(self.cfg.files))
        if loaded.problems:
            self.drop("bad_row", len(loaded.problems))
            self.stats.examples.extend(loaded.problems[:3])
        return loaded.table

    def _from_dataset(self) -> pa.Table:
        c = self.cfg
        selected = Table(f"{c.dataset}/selected", pa.schema([]))
        files = selected.files()
        if not files:
            raise ConfigError(f"{self.source}: prompts.dataset: {c.dataset}: no selected pairs (is it a finished build folder?)")
        rows = ds.dataset(files, format="parquet").to_table(columns=["prompt_id", "category", "modality", "prompt", "split"])
        splits = sorted(set(rows["split"].to_pylist()))
        rows = rows.filter(pc.equal(rows["split"], c.split))
        if not rows.num_rows:
            raise ConfigError(f"{self.source}: prompts.split: {c.dataset} has no {c.split!r} pairs; its splits are {splits}")
        rows = rows.append_column("source", pa.array([f"dataset:{c.split}"] * rows.num_rows, pa.string()))
        return rows.select(PROMPTS.names).cast(PROMPTS)


# -------------------------------------------------------------------------------------------- generate


@dataclass
class EvalGenerateStage(GenerateStage):
    """The build's generate stage for one eval model: its trained weights applied after loading."""

    model: EvalModel | None = None

    def setup(self) -> None:
        super().setup()
        apply_weights(self.pipe, self.model)


# ----------------------------------------------------------------------------------------------- pairs


@dataclass
class EvalPairsStage(TaskStage):
    """Per category: each candidate's image paired with the base's of the same prompt and seed."""

    base: str = ""
    candidates_names: tuple[str, ...] = ()
    candidates: Table | None = None
    pairs: Table | None = None

    name: ClassVar[str] = "pairs"
    verb: ClassVar[str] = "paired"

    def outputs(self) -> tuple[Table, ...]:
        return (self.pairs,)

    def plan(self) -> list[Unit]:
        recs = self.need(self.candidates, "generate")
        by_cat: dict[str, list[str]] = {}
        rows: dict[str, int] = {}
        for rec in recs.values():
            if rec.cluster is not None:
                by_cat.setdefault(rec.cluster, []).append(rec.id)
                rows[rec.cluster] = rows.get(rec.cluster, 0) + rec.rows
        return [make_unit("eval_pairs", (cat, self.base, list(self.candidates_names), sorted(ids)), key=cat,
                          rows=rows[cat], category=cat) for cat, ids in sorted(by_cat.items())]

    def process(self, unit: Unit) -> pa.Table:
        cat = unit.param("category")
        cols = ["candidate_id", "prompt_id", "category", "modality", "generator", "seed", "status"]
        df = self.candidates.read(cols, filter=ds.field("category") == cat).to_pandas()
        df = df[df["status"] == "ok"]
        base = df[df["generator"] == self.base]
        out = []
        for name in self.candidates_names:
            cand = df[df["generator"] == name]
            both = cand.merge(base[["prompt_id", "seed", "candidate_id"]], on=["prompt_id", "seed"], suffixes=("", "_base"))
            out.append(both)
        rows = [
            {"pair_id": pair_id(r.candidate_id, r.candidate_id_base), "prompt_id": r.prompt_id, "category": r.category,
             "modality": r.modality, "winner_id": r.candidate_id, "loser_id": r.candidate_id_base,
             "agree": 0, "n_scorers": 0, "kept": True, "drop_reason": None}
            for both in out for r in both.itertuples()
        ]
        table = pa.Table.from_pylist(sorted(rows, key=lambda r: r["pair_id"]), schema=EVAL_PAIRS)
        self.count(n_in=len(df), n_out=table.num_rows)
        self.stats.extra = {"kept": table.num_rows}  # the judge stage plans its units from this
        return table


# ------------------------------------------------------------------------------------------- alignment


@dataclass
class AlignmentStage(ActorStage):
    """The VLM's P("Yes") to 'Does this figure show "<prompt>"?' for every generated image or video."""

    cfg: JudgeConfig | None = None
    model_path: str = ""
    media_root: str = ""
    candidates: Table | None = None
    prompts: Table | None = None
    alignment: Table | None = None

    name: ClassVar[str] = "alignment"
    verb: ClassVar[str] = "asked"

    def outputs(self) -> tuple[Table, ...]:
        return (self.alignment,)

    def plan(self) -> list[Unit]:
        recs = self.need(self.candidates, "generate")
        c = self.cfg
        rater = (c.backend, self.model_path, c.dtype, c.image_size, c.video_frames)
        per_unit = self.resources.batch_size * self.resources.batches_per_unit
        return [make_unit("alignment", (rater, [r.id for r in group]), key=cat, slices=tuple(r.slice for r in group), category=cat)
                for cat, group in plan_by_category(recs, per_unit)]

    def setup(self) -> None:
        from reward_models.vlm.rater import VLMRater

        self.rater = VLMRater.from_config(self.cfg, self.model_path, device="cuda" if self.resources.num_gpus > 0 else "cpu")

    def _tasks(self, unit: Unit) -> list[dict[str, Any]]:
        cands = read_slices(unit.slices, ["candidate_id", "prompt_id", "category", "modality", "media_path", "status"])
        cands = cands.filter(pc.equal(cands["status"], "ok"))
        if not cands.num_rows:
            return []
        ids = pa.array(sorted(set(cands["prompt_id"].to_pylist())))
        prompts = self.prompts.read(["prompt_id", "prompt"], filter=ds.field("prompt_id").isin(ids))
        text = dict(zip(prompts["prompt_id"].to_pylist(), prompts["prompt"].to_pylist()))
        tasks = []
        for r in cands.to_pylist():
            if r["prompt_id"] not in text:
                raise StageInputError(f"prompt id {r['prompt_id']} of candidate {r['candidate_id']} is not in {self.prompts.folder}")
            tasks.append({**r, "prompt": text[r["prompt_id"]]})
        return sorted(tasks, key=lambda t: t["candidate_id"])

    def process(self, unit: Unit) -> pa.Table:
        from reward_models.vlm.prompting import AlignmentQuery, RaterAnswerError

        tasks = self._tasks(unit)
        results: list[Any] = [None] * len(tasks)
        queries: dict[int, AlignmentQuery] = {}
        for i, t in enumerate(tasks):
            try:
                queries[i] = AlignmentQuery(item_id=t["candidate_id"], prompt=t["prompt"], media=rater_media(self.media_root, t["media_path"], t["modality"], self.cfg.video_frames))
            except Exception as err:
                results[i] = ItemFailure.of(t["candidate_id"], err, CORRUPT_MEDIA)
        order = list(queries)
        bs = self.resources.batch_size
        for s in range(0, len(order), bs):
            idx = order[s : s + bs]
            answers = batch_then_each(idx, lambda ii: self.rater.alignment_each([queries[i] for i in ii]),
                                      lambda i: tasks[i]["candidate_id"])
            for i, a in zip(idx, answers):
                if isinstance(a, RaterAnswerError):
                    a = ItemFailure.of(tasks[i]["candidate_id"], a, VLM_NO_LABEL)
                elif isinstance(a, Exception):
                    a = ItemFailure.of(tasks[i]["candidate_id"], a)
                results[i] = a
        rows = []
        for t, r in zip(tasks, results):
            row = {"candidate_id": t["candidate_id"], "category": t["category"], "rater": self.rater.name}
            if isinstance(r, ItemFailure):
                self.fail(r)
                rows.append({**row, "p_yes": None, "reason": r.reason})
            else:
                rows.append({**row, "p_yes": float(r), "reason": None})
        self.count(n_in=len(tasks), n_out=sum(not isinstance(r, ItemFailure) for r in results))
        return pa.Table.from_pylist(rows, schema=ALIGNMENT)
