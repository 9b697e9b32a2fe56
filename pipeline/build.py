"""The build driver: wires the stages (which never import each other) through their parquet tables.

    prompts -> generate -> score -> pair -> judge -> select -> write

Each stage reads its inputs from the build folder and writes its output atomically, so any stage can be
rerun alone, and a build killed at any moment resumes by identity to the same shards.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.compute as pc
import yaml

from pipeline import models
from pipeline.card import write_card
from pipeline.generate import GenerateStage, plan_candidates
from pipeline.pair import PairRules, attach_phash, form_pairs_for_group, form_pairs_ray
from pipeline.prompts import capacity, library_prompts, load_prompt_files
from pipeline.ray_runtime import init_ray
from pipeline.report import NullReporter, Reporter, StageSummary
from pipeline.score import ScoreStage, add_group_stats, merge_raw_scores, score_names, video_metrics_pool
from pipeline.select import SELECTION_REPORT, select_pairs
from pipeline.stage import ActorStage, make_units, run_stage
from pipeline.store import PartStore, concat, dedupe_sorted, read_table, write_bytes, write_table
from pipeline.write import write_shards
from schemas.categories import modality_of
from schemas.config import BuildConfig, ConfigError
from schemas.tables import CANDIDATES, JUDGEMENTS, PROMPTS, pairs_schema, raw_scores_schema, scores_schema, selected_schema

STAGES: tuple[str, ...] = ("prompts", "generate", "score", "pair", "judge", "select", "write")
_RAY_STAGES = {"generate", "score", "write"}


class StageInputError(RuntimeError):
    """A stage was asked to run before the stage that makes its input."""


@dataclass
class BuildResult:
    out_dir: Path
    summaries: list[StageSummary] = field(default_factory=list)
    manifests: dict[str, dict] = field(default_factory=dict)

    @property
    def card(self) -> Path:
        return self.out_dir / "card" / "README.md"


class Paths:
    """Where every table of a build lives."""

    def __init__(self, root: Path):
        self.root = root
        self.config = root / "config.yaml"
        self.prompts = root / "prompts" / "prompts.parquet"
        self.prompt_problems = root / "prompts" / "problems.txt"
        self.candidates = root / "candidates"
        self.raw_scores = root / "scores" / "raw"
        self.scores = root / "scores" / "scores.parquet"
        self.pairs = root / "pairs" / "pairs.parquet"
        self.judgements = root / "judgements" / "raw"
        self.judge_keeps = root / "judgements" / "keeps.parquet"
        self.selected = root / "selected" / "selected.parquet"
        self.dropped = root / "selected" / "dropped.parquet"


def _need(path: Path, stage: str, maker: str) -> Path:
    if not path.exists():
        raise StageInputError(f"stage {stage!r} needs {path}; run the {maker!r} stage first")
    return path


def parse_stages(spec: str | None) -> list[str]:
    if not spec:
        return list(STAGES)
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {','.join(STAGES)}")
    return [s for s in STAGES if s in wanted]


def preflight(cfg: BuildConfig, source: str = "<config>") -> dict:
    """Checks that need the registries (generators, prompt library), before anything is written.

    Returns the resolved generator specs; raises ConfigError naming the file and key.
    """
    from pipeline.generators import resolve_generator
    from pipeline.prompts import PROMPT_FILE_TYPES

    specs = {}
    for i, g in enumerate(cfg.generators):
        try:
            specs[g.name] = spec = resolve_generator(g)
        except ValueError as err:
            raise ConfigError(f"{source}: generators.{i}: {err}") from None
        floor = cfg.media.min_side(spec.modality)
        for j, sampling in enumerate(g.sampling):
            params = {**spec.call_kwargs, **sampling}
            if "height" in params and "width" in params and min(params["height"], params["width"]) < floor:
                raise ConfigError(
                    f"{source}: generators.{i}.sampling.{j}: {params['width']}x{params['height']} is below "
                    f"media.min_{spec.modality}_side {floor}"
                )
    for i, f in enumerate(cfg.prompt_files):
        if not Path(f).is_file():
            raise ConfigError(f"{source}: prompt_files.{i}: {f}: no such file")
        if Path(f).suffix.lower() not in PROMPT_FILE_TYPES:
            raise ConfigError(f"{source}: prompt_files.{i}: {f}: expected one of {', '.join(PROMPT_FILE_TYPES)}")
    for cat, q in cfg.categories.items():
        if q.prompts > capacity(cat) and not cfg.prompt_files:
            raise ConfigError(f"{source}: categories.{cat}.prompts: {q.prompts} asked, the library has {capacity(cat)}")
        serving = [
            g.name for g in cfg.generators
            if specs[g.name].modality == modality_of(cat) and (g.categories is None or cat in g.categories)
        ]
        if not serving:
            raise ConfigError(f"{source}: categories.{cat}: no {modality_of(cat)} generator serves this category")
    return specs


class Build:
    def __init__(
        self,
        cfg: BuildConfig,
        reporter: Reporter | None = None,
        cache_dir: str | Path | None = None,
        source: str = "<config>",
    ):
        self.cfg = cfg
        self.source = source
        self.out = Path(cfg.output_dir).resolve()
        self.paths = Paths(self.out)
        self.reporter = reporter or NullReporter()
        self.cache_dir = Path(cache_dir or cfg.cache_dir or models.default_cache_dir())
        self.media_root = cfg.media.root or str(self.out / "media")
        self.scorers = cfg.scorer_names
        self.score_cols = score_names(self.scorers)

    # -- driver ---------------------------------------------------------------------------------
    def run(self, stages: list[str] | None = None) -> BuildResult:
        stages = stages or list(STAGES)
        self.specs = preflight(self.cfg, self.source)
        self.out.mkdir(parents=True, exist_ok=True)
        write_bytes(self.paths.config, yaml.safe_dump(self.cfg.model_dump(mode="json"), sort_keys=False).encode())
        if _RAY_STAGES & set(stages):
            init_ray(self.cfg.ray)
        result = BuildResult(self.out)
        for stage in stages:
            t0 = time.perf_counter()
            summary = getattr(self, f"_{stage}")(result)
            summary.seconds = time.perf_counter() - t0
            result.summaries.append(summary)
            self.reporter.finish(summary)
        return result

    def _run_pending(self, stage: ActorStage, units: list[list[dict]], store: PartStore) -> None:
        """Run the units whose ids are not all in `store` yet, appending each unit's rows as it lands."""
        done = store.ids()
        pending = [u for u in units if not all(t["id"] in done for t in u)]
        self.reporter.advance(sum(len(u) for u in units) - sum(len(u) for u in pending))
        for table in run_stage(stage, pending):
            store.append(table)
            self.reporter.advance(table.num_rows)

    # -- stages ---------------------------------------------------------------------------------
    def _prompts(self, result: BuildResult) -> StageSummary:
        counts = {c: min(q.prompts, capacity(c)) for c, q in self.cfg.categories.items()}
        self.reporter.start("prompts", sum(counts.values()))
        tables = [library_prompts(counts, self.cfg.seed)]
        problems: list[str] = []
        if self.cfg.prompt_files:
            loaded = load_prompt_files(self.cfg.prompt_files, categories=list(self.cfg.categories))
            tables.append(loaded.table)
            problems = loaded.problems
        table = dedupe_sorted(concat(tables, PROMPTS), "prompt_id")
        write_table(table, self.paths.prompts)
        write_bytes(self.paths.prompt_problems, "".join(f"{p}\n" for p in problems).encode())
        self.reporter.advance(table.num_rows)
        note = f"bad rows listed in {self.paths.prompt_problems}" if problems else ""
        return StageSummary(
            "prompts", n_in=sum(counts.values()) + sum(t.num_rows for t in tables[1:]) + len(problems),
            n_out=table.num_rows, dropped={"bad_row": len(problems)}, note=note,
        )

    def _generate(self, result: BuildResult) -> StageSummary:
        prompts = read_table(_need(self.paths.prompts, "generate", "prompts"), PROMPTS)
        specs = self.specs
        tasks = plan_candidates(prompts, self.cfg, specs)
        store = PartStore(self.paths.candidates, CANDIDATES, "candidate_id")
        done = store.ids()
        todo = sum(t["id"] not in done for t in tasks)
        self.reporter.start("generate", len(tasks))
        for gcfg in self.cfg.generators:
            mine = [t for t in tasks if t["generator"] == gcfg.name]
            stage = GenerateStage(
                resources=gcfg.resources,
                spec=specs[gcfg.name],
                model_path=models.generator_path(specs[gcfg.name], self.cache_dir),
                media_root=self.media_root,
                media=self.cfg.media,
            )
            self._run_pending(stage, make_units(mine, gcfg.resources.batch_size, key=lambda t: t["params"]), store)
        cands = store.read()
        failed = pc.sum(pc.equal(cands["status"], "failed")).as_py() or 0
        return StageSummary(
            "generate", n_in=len(tasks), n_out=cands.num_rows - failed, dropped={"failed": failed},
            note=f"({todo} generated now, {len(tasks) - todo} already there)",
        )

    def _score(self, result: BuildResult) -> StageSummary:
        _need(self.paths.candidates, "score", "generate")
        cands = PartStore(self.paths.candidates, CANDIDATES, "candidate_id").read()
        cands = cands.filter(pc.equal(cands["status"], "ok"))
        prompts = read_table(_need(self.paths.prompts, "score", "prompts"), PROMPTS).select(["prompt_id", "prompt"])
        rows = cands.join(prompts, "prompt_id").to_pylist()
        orphans = sorted({r["prompt_id"] for r in rows if r["prompt"] is None})
        if orphans:
            raise StageInputError(
                f"{len(orphans)} prompt ids of {self.paths.candidates} are not in {self.paths.prompts} "
                f"(e.g. {orphans[0]}): was the config's prompt set changed after generate? use a new output_dir"
            )
        tasks = [
            {"id": r["candidate_id"], **{k: r[k] for k in ("prompt_id", "category", "modality", "prompt", "media_path")}}
            for r in rows
        ]
        groups = self.cfg.scoring.model_groups()
        self.reporter.start("score", len(tasks) * len(groups))
        metrics_pool = video_metrics_pool([[r.name for r in g] for g, _ in groups])
        raws = []
        for gi, (group, resources) in enumerate(groups):
            stage = ScoreStage(
                resources=resources,
                models=[(r.name, models.reward_model_path(r.name, r.model, self.cache_dir), r.dtype, r.options) for r in group],
                media_root=self.media_root,
                video_frames=self.cfg.scoring.video_frames,
                video_metrics=gi == metrics_pool,
            )
            store = PartStore(self.paths.raw_scores / f"group-{gi}", raw_scores_schema(stage.columns()), "candidate_id")
            units = make_units(tasks, resources.batch_size, key=lambda t: t["modality"])
            self._run_pending(stage, units, store)
            raws.append(store.read())
        raw = merge_raw_scores(raws, self.score_cols)
        write_table(add_group_stats(raw, self.score_cols), self.paths.scores)
        return StageSummary("score", n_in=len(tasks), n_out=raw.num_rows)

    def _pair(self, result: BuildResult) -> StageSummary:
        pcfg = self.cfg.pairing
        scores = read_table(_need(self.paths.scores, "pair", "score"), scores_schema(self.score_cols))
        if pcfg.near_duplicate_bits is not None:  # the pHash was computed at generate time, once per candidate
            scores = attach_phash(scores, PartStore(self.paths.candidates, CANDIDATES, "candidate_id").read())
        self.reporter.start("pair", scores.num_rows)
        rules = PairRules(self.cfg.quorum, pcfg.min_margin, pcfg.max_margin, pcfg.near_duplicate_bits)
        use_ray = pcfg.engine == "ray" or (pcfg.engine == "auto" and scores.num_rows >= pcfg.ray_min_rows)
        if use_ray:
            init_ray(self.cfg.ray)
            pairs = form_pairs_ray(scores, self.scorers, rules)
        else:
            pairs = form_pairs_for_group(scores, self.scorers, rules)
        write_table(pairs, self.paths.pairs)
        self.reporter.advance(scores.num_rows)
        counts = pc.value_counts(pairs["drop_reason"].drop_null()).to_pylist()  # columnar: 35M pairs at 10M candidates
        reasons = {c["values"]: c["counts"] for c in counts}
        return StageSummary(
            "pair", n_in=pairs.num_rows, n_out=pairs.num_rows - sum(reasons.values()), dropped=dict(sorted(reasons.items())),
            note="(Ray Data groupby)" if use_ray else "",
        )

    def _judge(self, result: BuildResult) -> StageSummary:
        jcfg = self.cfg.judge
        if jcfg is None:
            return StageSummary("judge", note="skipped: no VLM rater configured")
        from pipeline.judge import JudgeStage, judge_keeps, rater_model_path

        pairs = read_table(_need(self.paths.pairs, "judge", "pair"), pairs_schema(self.scorers))
        pairs = pairs.filter(pairs["kept"])  # cheap before dear: the VLM sees only consistent pairs
        media = PartStore(self.paths.candidates, CANDIDATES, "candidate_id").read().select(["candidate_id", "media_path"])
        prompts = read_table(self.paths.prompts, PROMPTS).select(["prompt_id", "prompt"])
        where = dict(zip(media["candidate_id"].to_pylist(), media["media_path"].to_pylist()))
        text = dict(zip(prompts["prompt_id"].to_pylist(), prompts["prompt"].to_pylist()))
        tasks = [
            {"id": r["pair_id"], "prompt": text[r["prompt_id"]], "category": r["category"], "modality": r["modality"],
             "winner_path": where[r["winner_id"]], "loser_path": where[r["loser_id"]]}
            for r in pairs.select(["pair_id", "prompt_id", "category", "modality", "winner_id", "loser_id"]).to_pylist()
        ]
        store = PartStore(self.paths.judgements, JUDGEMENTS, "pair_id")
        self.reporter.start("judge", len(tasks))
        stage = JudgeStage(
            resources=jcfg.resources, cfg=jcfg, model_path=rater_model_path(jcfg, self.cache_dir), media_root=self.media_root
        )
        self._run_pending(stage, make_units(tasks, jcfg.resources.batch_size, key=lambda t: t["modality"]), store)
        judgements = store.read()
        keeps = judge_keeps(judgements, jcfg)
        write_table(keeps, self.paths.judge_keeps)
        reasons = Counter(r for r in keeps["drop_reason"].to_pylist() if r)
        return StageSummary("judge", n_in=len(tasks), n_out=keeps.num_rows - sum(reasons.values()), dropped=dict(reasons))

    def _select(self, result: BuildResult) -> StageSummary:
        pairs = read_table(_need(self.paths.pairs, "select", "pair"), pairs_schema(self.scorers))
        prompts = read_table(self.paths.prompts, PROMPTS)
        kept = pc.sum(pairs["kept"]).as_py() or 0
        self.reporter.start("select", kept)
        judged = None
        if self.cfg.judge is not None:
            from pipeline.judge import JUDGE_KEEPS

            _need(self.paths.judge_keeps, "select", "judge")
            judged = (PartStore(self.paths.judgements, JUDGEMENTS, "pair_id").read(), read_table(self.paths.judge_keeps, JUDGE_KEEPS))
        cands = PartStore(self.paths.candidates, CANDIDATES, "candidate_id").read().select(["candidate_id", "generator", "category"])
        sel = select_pairs(pairs, prompts, self.cfg, judged, candidates=cands)
        write_table(sel.selected, self.paths.selected)
        write_table(sel.dropped, self.paths.dropped)
        write_bytes(self.out / SELECTION_REPORT, (json.dumps(sel.report, indent=2, sort_keys=True) + "\n").encode())
        self.reporter.advance(kept)
        note = "; ".join(
            f"{c}: {got}/{q}" + (f" ({', '.join(f'{r} {n}' for r, n in sel.report[c]['short_because'].items())})"
                                 if sel.report[c]["short_because"] else "")
            for c, (q, got) in sorted(sel.shortfall.items())
        )
        return StageSummary(
            "select", n_in=kept, n_out=sel.selected.num_rows,
            dropped=dict(Counter(sel.dropped["reason"].to_pylist())),
            note=f"short of quota: {note}; see {SELECTION_REPORT}" if note else "",
        )

    def _write(self, result: BuildResult) -> StageSummary:
        selected = read_table(_need(self.paths.selected, "write", "select"), selected_schema(self.scorers))
        self.reporter.start("write", selected.num_rows)
        scores = read_table(self.paths.scores, scores_schema(self.score_cols))
        result.manifests = write_shards(
            selected,
            PartStore(self.paths.candidates, CANDIDATES, "candidate_id").read(),
            scores,
            out_dir=str(self.out),
            media_root=self.media_root,
            scorers=self.scorers,
            score_cols=self.score_cols,
            image_format=self.cfg.media.image_format,
            samples_per_shard=self.cfg.shards.samples_per_shard,
            name=self.cfg.name,
        )
        import pyarrow.parquet as pq  # the card needs only these columns of every formed pair

        pairs = pq.read_table(self.paths.pairs, columns=["pair_id", "modality", *(f"margin_{s}" for s in self.scorers)])
        judged = self.cfg.judge is not None and self.paths.judgements.exists()
        judgements = PartStore(self.paths.judgements, JUDGEMENTS, "pair_id").read().select(["pair_id", "p_winner"]) if judged else None
        write_card(self.out, self.cfg, result.manifests, selected, scores=scores, pairs=pairs, judgements=judgements)
        self.reporter.advance(selected.num_rows)
        n_shards = sum(len(m["shards"]) for m in result.manifests.values())
        return StageSummary("write", n_in=selected.num_rows, n_out=selected.num_rows, note=f"{n_shards} shards")


def build(cfg: BuildConfig, stages: list[str] | None = None, reporter: Reporter | None = None) -> BuildResult:
    """Run the build (all stages, or the named ones) and return where everything landed."""
    return Build(cfg, reporter).run(stages)


__all__ = ["STAGES", "Build", "BuildResult", "StageInputError", "build", "parse_stages"]
