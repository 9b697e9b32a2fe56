"""`cli.py eval`: the eval's stage graph, walked by the build's executor, then its figures and report.

    prompts -> generate (per model) -> score -> [pairs -> judge] -> [alignment] -> summary, report

Every table is a catalogue table grown one unit at a time (as in a build), so a killed eval resumes
where it stopped, and adding a candidate to a finished eval generates and scores only that model:
the base's units are found done by identity.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from pipeline import models as model_store
from pipeline.catalogue import Catalogue
from pipeline.errors import ErrorPolicy, output_fault
from pipeline.eval.analyse import analyse
from pipeline.eval.models import EvalModel, resolve_model
from pipeline.eval.stages import EVAL_PAIRS, SEED_KEY, AlignmentStage, EvalGenerateStage, EvalPairsStage, EvalPromptsStage
from pipeline.eval.stats import Bootstrap
from pipeline.executor import Executor
from pipeline.judge import JudgeStage, rater_model_path
from pipeline.locks import FolderLock
from pipeline.model_sources import check_model_source, check_reward_models
from pipeline.ray_runtime import check_resources, init_ray
from pipeline.report import NullReporter, Reporter, StageSummary
from pipeline.score import ScoreStage, combine_summaries, run_scoring, score_names
from pipeline.store import write_atomic, write_bytes
from schemas.categories import modality_of
from schemas.config import GeneratorConfig
from schemas.config_io import ConfigError
from schemas.eval_config import EvalConfig
from schemas.tables import ALIGNMENT, CANDIDATES, JUDGEMENTS, PROMPTS, scores_schema

SUMMARY = "summary.json"
REPORT = "report.html"
SCORES = "scores.parquet"
_THUMB_PX, _THUMB_MAX_PIXELS = 256, 64_000_000


@dataclass
class EvalResult:
    out_dir: Path
    summary: dict
    summaries: list[StageSummary]

    @property
    def report(self) -> Path:
        return self.out_dir / REPORT


class Evaluation:
    """One eval folder: its tables, its graph and the loop that runs it. The model stages' classes are
    attributes, so tests run the very same graph with a planted scorer."""

    generate_stage: type[EvalGenerateStage] = EvalGenerateStage
    score_stage: type[ScoreStage] = ScoreStage
    judge_stage: type[JudgeStage] = JudgeStage
    alignment_stage: type[AlignmentStage] = AlignmentStage

    def __init__(self, cfg: EvalConfig, reporter: Reporter | None = None, source: str = "<config>",
                 cache_dir: str | Path | None = None):
        self.cfg = cfg
        self.source = source
        self.out = Path(cfg.output_dir).resolve()
        self.reporter = reporter or NullReporter()
        self.cache_dir = Path(cache_dir or cfg.cache_dir or model_store.default_cache_dir())
        self.media_root = cfg.media.root or str(self.out / "media")
        self.metrics = score_names([r.name for r in cfg.scoring.reward_models])
        self.catalogue = Catalogue(self.out)
        for name, schema in (("prompts", PROMPTS), ("candidates", CANDIDATES), ("scores", scores_schema(self.metrics)),
                             ("pairs", EVAL_PAIRS), ("judgements", JUDGEMENTS), ("alignment", ALIGNMENT)):
            self.catalogue.table(name, schema, cluster_by="category")

    def table(self, name: str):
        return self.catalogue.table(name)

    # -- checks before anything is written ----------------------------------------------------------
    def preflight(self) -> list[EvalModel]:
        cfg, src = self.cfg, self.source
        found = [resolve_model(m, f"{src}: {'base' if i == 0 else f'candidates.{i - 1}'}") for i, m in enumerate(cfg.models)]
        check_reward_models(cfg.scoring.reward_models, src, "scoring.reward_models")
        if cfg.judge is not None and cfg.judge.backend != "openai":
            check_model_source(cfg.judge.model, f"{src}: judge.model", "rater")
        modality = found[0].spec.modality
        for i, m in enumerate(found[1:]):
            if m.spec.modality != modality:
                raise ConfigError(f"{src}: candidates.{i}: {m.name} makes {m.spec.modality}s, the base {modality}s")
        for cat in cfg.prompts.categories:
            if modality_of(cat) != modality:
                raise ConfigError(f"{src}: prompts.categories.{cat}: a {modality_of(cat)} category, the models make {modality}s")
        return found

    def run(self) -> EvalResult:
        self.models = self.preflight()
        with FolderLock(self.out, "eval"):
            try:
                return self._run()
            except Exception as err:
                fault = output_fault(err, self.out)
                if fault is not None:
                    raise fault from err
                raise

    def _run(self) -> EvalResult:
        import ray

        write_bytes(self.out / "config.yaml", yaml.safe_dump(self.cfg.model_dump(mode="json"), sort_keys=False).encode())
        init_ray(self.cfg.ray, log_file=self.out / "logs" / "ray.log")
        cfg = self.cfg
        pools = [("generation", cfg.generation), *[(f"scoring.{key}", res) for key, res in cfg.scoring.pool_resources()]]
        if cfg.judge is not None:
            pools.append(("judge.resources", cfg.judge.resources))
        for key, res in pools:
            check_resources(key, res.num_gpus, res.num_cpus)
        f = cfg.failures
        self.executor = Executor(self.reporter, ErrorPolicy(f.max_share, f.min_items), use_ray=ray.is_initialized())
        summaries: list[StageSummary] = []
        for step in (self._prompts, self._generate, self._score, self._judge, self._alignment):
            summary = step()
            if summary is not None:
                summaries.append(summary)
                self.reporter.finish(summary)
        t0 = time.perf_counter()
        summary = self._finish()
        self.reporter.finish(StageSummary("report", n_in=len(self.models), n_out=len(self.models),
                                          seconds=time.perf_counter() - t0, note=f"{self.out / REPORT}"))
        return EvalResult(self.out, summary, summaries)

    # -- the graph ----------------------------------------------------------------------------------
    def _columnar(self, stage):
        stage.engine, stage.ray_min_rows = self.cfg.ray.columnar, self.cfg.ray.columnar_min_rows
        return stage

    def _prompts(self) -> StageSummary:
        stage = EvalPromptsStage(cfg=self.cfg.prompts, prompts=self.table("prompts"), source=self.source, engine="local")
        summary = self.executor.run(stage)
        rows = {}
        for rec in self.table("prompts").records().values():
            rows.update(rec.unit_stats.extra.get("category_rows", {}))
        modality = self.models[0].spec.modality
        wrong = sorted(c for c in rows if modality_of(c) != modality)
        if wrong:
            raise ConfigError(f"{self.source}: prompts: categories {wrong} are not {modality} categories, the models make {modality}s")
        self.categories = tuple(sorted(rows))
        return summary

    def _generate(self) -> StageSummary:
        stages = []
        for m in self.models:
            gcfg = GeneratorConfig(name=m.name, seeds_per_prompt=self.cfg.seeds_per_prompt, sampling=[dict(self.cfg.sampling)],
                                   resources=self.cfg.generation)
            stages.append(self.generate_stage(
                resources=self.cfg.generation, spec=m.spec, gcfg=gcfg, model_path=model_store.generator_path(m.spec, self.cache_dir),
                media_root=self.media_root, media=self.cfg.media, prompts=self.table("prompts"),
                candidates=self.table("candidates"), categories=self.categories, seed_key=SEED_KEY, weights=m.weights, model=m,
            ))
        return combine_summaries("generate", self.executor.run_group(stages), "generated", keep_all=True)

    def _score(self) -> StageSummary:
        return run_scoring(self.executor, self.catalogue, self.cfg.scoring,
                           lambda r: model_store.reward_model_path(r.name, r.model, self.cache_dir), self.score_stage,
                           media_root=self.media_root, columnar=self._columnar)

    def _judge(self) -> StageSummary | None:
        jcfg = self.cfg.judge
        if jcfg is None:
            return None
        pairs = EvalPairsStage(base=self.models[0].name, candidates_names=tuple(m.name for m in self.models[1:]),
                               candidates=self.table("candidates"), pairs=self.table("pairs"), engine="local")
        self.reporter.finish(self.executor.run(pairs))
        stage = self.judge_stage(resources=jcfg.resources, cfg=jcfg, model_path=self.rater_path(jcfg),
                                 media_root=self.media_root, pairs=self.table("pairs"), candidates=self.table("candidates"),
                                 prompts=self.table("prompts"), judgements=self.table("judgements"))
        return self.executor.run(stage)

    def _alignment(self) -> StageSummary | None:
        jcfg = self.cfg.judge
        if jcfg is None or not self.cfg.alignment:
            return None
        stage = self.alignment_stage(resources=jcfg.resources, cfg=jcfg, model_path=self.rater_path(jcfg),
                                     media_root=self.media_root, candidates=self.table("candidates"),
                                     prompts=self.table("prompts"), alignment=self.table("alignment"))
        return self.executor.run(stage)

    def rater_path(self, jcfg) -> str:
        """The rater's checkpoint; the toy rater with Yes / No in its vocabulary, so it can answer the alignment too."""
        from reward_models.vlm.prompting import ALIGNMENT_LABELS

        return rater_model_path(jcfg, self.cache_dir, ALIGNMENT_LABELS if self.cfg.alignment else ())

    # -- figures and report -------------------------------------------------------------------------
    def rows(self) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        """scores.parquet's rows (one per image or video of every model) and the judged pairs."""
        cands = self.table("candidates").read(
            ["candidate_id", "prompt_id", "category", "modality", "generator", "seed", "media_path", "status", "reason"]).to_pandas()
        cands = cands.rename(columns={"generator": "model", "reason": "generate_reason"})
        prompts = self.table("prompts").read(["prompt_id", "prompt"]).to_pandas()
        scores = self.table("scores").read(["candidate_id", *self.metrics, "reason"]).to_pandas()
        scores = scores.rename(columns={"reason": "score_reason"})
        df = cands.merge(prompts, on="prompt_id", how="left").merge(scores, on="candidate_id", how="left")
        if self.cfg.judge is not None and self.cfg.alignment:
            align = self.table("alignment").read(["candidate_id", "p_yes", "reason"]).to_pandas()
            df = df.merge(align.rename(columns={"reason": "alignment_reason"}), on="candidate_id", how="left")
        judged = None
        if self.cfg.judge is not None:
            j = self.table("judgements").read(["pair_id", "p_winner", "position_consistency", "reason"]).to_pandas()
            pairs = self.table("pairs").read(["pair_id", "winner_id", "loser_id"]).to_pandas()
            judged = j.merge(pairs, on="pair_id").merge(
                df[["candidate_id", "model", "prompt_id", "category", "seed"]], left_on="winner_id", right_on="candidate_id")
            judged = judged.rename(columns={"p_winner": "p_candidate", "reason": "judge_reason"})
            df = df.merge(judged[["winner_id", "p_candidate"]].rename(columns={"winner_id": "candidate_id", "p_candidate": "p_vlm_vs_base"}),
                          on="candidate_id", how="left")
        order = {m.name: i for i, m in enumerate(self.models)}
        df = df[df["model"].isin(order)]
        df = df.sort_values(["model", "category", "prompt_id", "seed"], key=lambda s: s.map(order) if s.name == "model" else s)
        return df.reset_index(drop=True), judged

    def _finish(self) -> dict:
        from pipeline.eval.report import render_report

        df, judged = self.rows()
        b = self.cfg.bootstrap
        names = [m.name for m in self.models]
        figures = analyse(df, judged, base=names[0], candidates=names[1:], metrics=self.metrics,
                          boot=Bootstrap(b.resamples, b.confidence, b.seed))
        p = self.cfg.prompts
        summary = {
            "title": self.cfg.name,
            "output_dir": str(self.out),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "prompts": {"source": p.source, "detail": _prompt_detail(p),
                        "per_category": df[df["model"] == names[0]].groupby("category")["prompt_id"].nunique().to_dict(),
                        "seeds_per_prompt": self.cfg.seeds_per_prompt},
            "bootstrap": {"resamples": b.resamples, "confidence": b.confidence, "unit": "prompt"},
            "base": self.models[0].describe(),
            "candidates": [m.describe() for m in self.models[1:]],
            **figures,
            "counts": _counts(df, names),
            "vlm_rater": None if self.cfg.judge is None else f"{self.cfg.judge.backend}:{self.cfg.judge.model}",
        }
        text = json.dumps(summary, indent=2, allow_nan=False)
        write_bytes(self.out / SUMMARY, text.encode())
        write_atomic(self.out / SCORES, lambda f: pq.write_table(pa.Table.from_pandas(df, preserve_index=False), f))
        html = render_report(summary, self.grids(df))
        write_bytes(self.out / REPORT, html.encode())
        return summary

    def grids(self, df: pd.DataFrame) -> list[dict]:
        """Side-by-side examples: `report.examples` prompts, taken round-robin over categories in prompt id
        order (ids are content hashes: a stable mix), each at its first seed, with every model's media and scores."""
        from pipeline.html_report import frame_strip_uris, thumbnail_uri
        from pipeline.media import MediaStore

        names = [m.name for m in self.models]
        n = self.cfg.report.examples
        if not n or df.empty:
            return []
        base = df[df["model"] == names[0]]
        per_cat = {cat: sorted(g["prompt_id"].unique()) for cat, g in base.groupby("category")}
        chosen: list[str] = []
        for k in range(max((len(v) for v in per_cat.values()), default=0)):
            chosen += [v[k] for v in per_cat.values() if k < len(v)]
        store = MediaStore(self.media_root)
        grids = []
        for pid in chosen[:n]:
            rows = df[df["prompt_id"] == pid]
            seed = int(rows[rows["model"] == names[0]]["seed"].min())
            first = rows.iloc[0]
            cells = []
            for name in names:
                hit = rows[(rows["model"] == name) & (rows["seed"] == seed)]
                poster, frames, scores = None, [], {}
                if len(hit):
                    r = hit.iloc[0]
                    scores = {m: (None if pd.isna(r[m]) else float(r[m])) for m in self.metrics if m in r}
                    if isinstance(r["media_path"], str):
                        data = store.read(r["media_path"])
                        video = r["modality"] == "video"
                        poster = thumbnail_uri(data, _THUMB_PX, _THUMB_MAX_PIXELS, video=video)
                        if video:
                            frames = frame_strip_uris(data, self.cfg.report.frames, _THUMB_PX // 2, _THUMB_MAX_PIXELS)
                cells.append({"model": name, "poster": poster, "frames": frames, "scores": scores})
            grids.append({"prompt": str(first["prompt"]), "category": str(first["category"]), "modality": str(first["modality"]),
                          "seed": seed, "cells": cells})
        return grids


def _prompt_detail(p) -> str:
    if p.source == "held_out":
        return f"the prompt library's held-out split (order seed {p.seed})"
    if p.source == "file":
        return "prompt files: " + ", ".join(p.files)
    return f"the {p.split!r} split of {p.dataset}"


def _counts(df: pd.DataFrame, names: list[str]) -> dict:
    out = {}
    for name in names:
        rows = df[df["model"] == name]
        failed: dict[str, int] = {}
        for col in ("generate_reason", "score_reason"):
            for reason in rows[col].dropna():
                key = str(reason).split(":")[0]
                failed[key] = failed.get(key, 0) + 1
        out[name] = {"candidates": int(len(rows)), "generated": int((rows["status"] == "ok").sum()),
                     "scored": int((rows["status"].eq("ok") & rows["score_reason"].isna()).sum()), "failed": failed}
    return out


def evaluate(cfg: EvalConfig, reporter: Reporter | None = None, source: str = "<config>") -> EvalResult:
    return Evaluation(cfg, reporter, source).run()
