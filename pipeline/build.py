"""The build: the stage graph of a config, walked by the executor.

    prompts -> generate -> score -> pair -> judge -> select -> write

The stages never import each other: they meet in `schemas/` and here, where each gets the handles of
the tables it reads and writes. Every table is a folder of the catalogue, grown one unit at a time, so
any stage can be rerun alone, and a build killed at any moment resumes by identity to the same shards.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline import models
from pipeline.catalogue import Catalogue, Table
from pipeline.errors import ErrorPolicy, output_fault
from pipeline.executor import Executor
from pipeline.generate import GenerateStage
from pipeline.judge import JudgeStage, rater_model_path
from pipeline.locks import FolderLock
from pipeline.model_sources import check_model_source, check_reward_models
from pipeline.pair import PairRules, PairStage
from pipeline.prompt_stage import PromptsStage
from pipeline.prompts import capacity
from pipeline.ray_runtime import check_resources, init_ray
from pipeline.report import NullReporter, Reporter, StageSummary
from pipeline.score import ScoreStage, combine_summaries, run_scoring, score_names
from pipeline.select import SELECTION_REPORT, SelectStage
from pipeline.space import check_space
from pipeline.stage import Stage, StageInputError, TaskStage
from pipeline.store import write_bytes
from pipeline.write import ShardStage
from schemas.categories import modality_of
from schemas.config import BuildConfig, ConfigError, ResourceConfig
from schemas.tables import (
    CANDIDATES,
    DROPPED,
    JUDGEMENTS,
    PROMPTS,
    SHARD_INDEX,
    pairs_schema,
    scores_schema,
    selected_schema,
)

STAGES: tuple[str, ...] = ("prompts", "generate", "score", "pair", "judge", "select", "write")
_ACTOR_STAGES = {"generate", "score", "judge"}


@dataclass
class BuildResult:
    out_dir: Path
    summaries: list[StageSummary] = field(default_factory=list)
    manifests: dict[str, dict] = field(default_factory=dict)

    @property
    def card(self) -> Path:
        return self.out_dir / "card" / "README.md"


def parse_stages(spec: str | None) -> list[str]:
    if not spec:
        return list(STAGES)
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in STAGES]
    if unknown:
        raise ConfigError(f"--stages: unknown stage(s) {', '.join(unknown)}; stages are {','.join(STAGES)}")
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
        check_model_source(spec.model, f"{source}: generators.{i}.model", "generator")
        floor = cfg.media.min_side(spec.modality)
        for j, sampling in enumerate(g.sampling):
            params = {**spec.call_kwargs, **sampling}
            check_call_args(params, f"{source}: generators.{i}.sampling.{j}")
            if "height" in params and "width" in params and min(params["height"], params["width"]) < floor:
                raise ConfigError(
                    f"{source}: generators.{i}.sampling.{j}: {params['width']}x{params['height']} is below "
                    f"media.min_{spec.modality}_side {floor}"
                )
    check_reward_models(cfg.scoring.reward_models, source, "scoring.reward_models")
    if cfg.judge is not None and cfg.judge.backend != "openai":
        check_model_source(cfg.judge.model, f"{source}: judge.model", "rater")
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


# pipeline call arguments whose meaning diffusers fixes: a number at least this (checked before any stage)
_CALL_ARG_MIN = {"num_inference_steps": 1, "height": 8, "width": 8, "num_frames": 1, "guidance_scale": 0.0,
                 "true_cfg_scale": 0.0, "max_sequence_length": 1, "strength": 0.0}


def check_call_args(params: dict, where: str) -> None:
    """ConfigError naming the key when a well-known pipeline argument is not a number in range."""
    for key, low in _CALL_ARG_MIN.items():
        if key not in params:
            continue
        value = params[key]
        want_int = isinstance(low, int)
        ok_type = isinstance(value, int) if want_int else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok_type:
            kind = "an integer" if want_int else "a number"
            raise ConfigError(f"{where}.{key}: expected {kind}, got {value!r}")
        if value < low:
            raise ConfigError(f"{where}.{key}: {value} is below the least meaningful value {low}")


class Build:
    """One build folder: its tables (the catalogue), its stage graph, and the loop that runs it.

    The model stages' classes are attributes, so a benchmark or a test can run the very same graph
    with stand-in models (benchmarks/build_scale.py does, with model-free generators and scorers).
    """

    generate_stage: type[GenerateStage] = GenerateStage
    score_stage: type[ScoreStage] = ScoreStage
    judge_stage: type[JudgeStage] = JudgeStage

    def __init__(
        self,
        cfg: BuildConfig,
        reporter: Reporter | None = None,
        cache_dir: str | Path | None = None,
        source: str = "<config>",
        check_space: bool = True,
    ):
        self.cfg = cfg
        self.source = source
        self.check_space = check_space
        self.out = Path(cfg.output_dir).resolve()
        self.reporter = reporter or NullReporter()
        self.cache_dir = Path(cache_dir or cfg.cache_dir or models.default_cache_dir())
        self.media_root = cfg.media.root or str(self.out / "media")
        self.scorers = cfg.scorer_names
        self.score_cols = score_names(self.scorers)
        self.catalogue = self._declare(Catalogue(self.out))

    def _declare(self, cat: Catalogue) -> Catalogue:
        """Every table of a build, with its schema (schemas/tables.py) and the column its units share."""
        by_category = {
            "prompts": PROMPTS, "candidates": CANDIDATES, "scores": scores_schema(self.score_cols),
            "pairs": pairs_schema(self.scorers), "judgements": JUDGEMENTS, "selected": selected_schema(self.scorers),
            "dropped": DROPPED,
        }
        for name, schema in by_category.items():
            cat.table(name, schema, cluster_by="category")
        cat.table("shard_index", SHARD_INDEX, cluster_by="modality")
        return cat

    def table(self, name: str) -> Table:
        return self.catalogue.table(name)

    # -- where models come from (tiny ones are built once in the cache) ------------------------------
    def generator_path(self, spec) -> str:
        return models.generator_path(spec, self.cache_dir)

    def reward_model_path(self, r) -> str:
        return models.reward_model_path(r.name, r.model, self.cache_dir)

    def rater_model_path(self, jcfg) -> str:
        return rater_model_path(jcfg, self.cache_dir)

    # -- the loop -----------------------------------------------------------------------------------
    def run(self, stages: list[str] | None = None) -> BuildResult:
        stages = stages or list(STAGES)
        self.specs = preflight(self.cfg, self.source)
        if self.check_space:
            check_space(self.cfg, self.specs, self.out)
        with FolderLock(self.out, "build"):
            try:
                return self._run(stages)
            except Exception as err:
                fault = output_fault(err, self.out)
                if fault is not None:
                    raise fault from err
                raise

    def _run(self, stages: list[str]) -> BuildResult:
        write_bytes(self.out / "config.yaml", yaml.safe_dump(self.cfg.model_dump(mode="json"), sort_keys=False).encode())
        if _ACTOR_STAGES & set(stages) or self.cfg.ray.columnar != "local":
            init_ray(self.cfg.ray, log_file=self.out / "logs" / "ray.log")  # the terminal keeps vipo's lines
        import ray

        if ray.is_initialized():
            for key, res in self._actor_pools(stages):  # every stage's ask, before the first one runs
                check_resources(key, res.num_gpus, res.num_cpus)

        f = self.cfg.failures
        self.executor = Executor(self.reporter, ErrorPolicy(f.max_share, f.min_items), use_ray=ray.is_initialized())
        result = BuildResult(self.out)
        for step in stages:
            summary = getattr(self, f"_{step}")(result)
            result.summaries.append(summary)
            self.reporter.finish(summary)
        return result

    def _actor_pools(self, stages: list[str]) -> list[tuple[str, ResourceConfig]]:
        """(config key, resources) of every actor pool the given stages start."""
        pools = []
        if "generate" in stages:
            pools += [(f"generators.{i}.resources", g.resources) for i, g in enumerate(self.cfg.generators)]
        if "score" in stages:
            pools += [(f"scoring.{key}", res) for key, res in self.cfg.scoring.pool_resources()]
        if "judge" in stages and self.cfg.judge is not None:
            pools.append(("judge.resources", self.cfg.judge.resources))
        return pools

    def _columnar(self, stage: TaskStage) -> TaskStage:
        stage.engine, stage.ray_min_rows = self.cfg.ray.columnar, self.cfg.ray.columnar_min_rows
        return stage

    # -- the graph: one method per step, each a stage (or a few) and its tables ---------------------
    def _prompts(self, result: BuildResult) -> StageSummary:
        counts = {c: min(q.prompts, capacity(c)) for c, q in self.cfg.categories.items()}
        stage = PromptsStage(counts=counts, seed=self.cfg.seed, prompt_files=tuple(self.cfg.prompt_files),
                             prompts=self.table("prompts"), engine="local")
        return self.executor.run(stage)

    def _generate(self, result: BuildResult) -> StageSummary:
        runs = []
        for g in self.cfg.generators:
            spec = self.specs[g.name]
            cats = tuple(c for c in self.cfg.categories
                         if modality_of(c) == spec.modality and (g.categories is None or c in g.categories))
            runs.append(lambda g=g, spec=spec, cats=cats: self.generate_stage(
                resources=g.resources, spec=spec, gcfg=g, model_path=self.generator_path(spec),
                media_root=self.media_root, media=self.cfg.media, prompts=self.table("prompts"),
                candidates=self.table("candidates"), categories=cats,
            ))
        return combine_summaries("generate", self.executor.run_group([make() for make in runs]), "generated", keep_all=True)

    def _score(self, result: BuildResult) -> StageSummary:
        return run_scoring(self.executor, self.catalogue, self.cfg.scoring, self.reward_model_path, self.score_stage,
                           media_root=self.media_root, columnar=self._columnar)

    def _pair(self, result: BuildResult) -> StageSummary:
        p = self.cfg.pairing
        stage = PairStage(scores=self.table("scores"), candidates=self.table("candidates"), pairs=self.table("pairs"),
                          scorers=tuple(self.scorers), rules=PairRules(self.cfg.quorum, p.min_margin, p.max_margin, p.near_duplicate_bits))
        return self.executor.run(self._columnar(stage))

    def _judge(self, result: BuildResult) -> StageSummary:
        jcfg = self.cfg.judge
        if jcfg is None:
            return StageSummary("judge", note="skipped: no VLM rater configured")
        stage = self.judge_stage(resources=jcfg.resources, cfg=jcfg, model_path=self.rater_model_path(jcfg),
                           media_root=self.media_root, pairs=self.table("pairs"), candidates=self.table("candidates"),
                           prompts=self.table("prompts"), judgements=self.table("judgements"))
        return self.executor.run(stage)

    def _select(self, result: BuildResult) -> StageSummary:
        stage = SelectStage(
            cfg=self.cfg, pairs=self.table("pairs"), judgements=self.table("judgements") if self.cfg.judge else None,
            candidates=self.table("candidates"), scores=self.table("scores"), prompts=self.table("prompts"),
            selected=self.table("selected"), dropped=self.table("dropped"), score_cols=tuple(self.score_cols),
            report_path=str(self.out / SELECTION_REPORT),
        )
        return self.executor.run(self._columnar(stage))

    def _write(self, result: BuildResult) -> StageSummary:
        from pipeline.card import write_card_from_tables

        stage = self._columnar(ShardStage(
            selected=self.table("selected"), shard_index=self.table("shard_index"), out_dir=str(self.out),
            media_root=self.media_root, scorers=tuple(self.scorers), image_format=self.cfg.media.image_format,
            samples_per_shard=self.cfg.shards.samples_per_shard, dataset_name=self.cfg.name, split=self.cfg.shards.split,
            use_ray=self.executor.use_ray and self.cfg.ray.columnar != "local",
        ))
        summary = self.executor.run(stage)
        result.manifests = stage.manifests
        tables = {n: self.table(n) for n in ("selected", "scores", "pairs")}
        if self.cfg.judge is not None:
            tables["judgements"] = self.table("judgements")
        run_remote(write_card_from_tables, self.executor.use_ray and self.cfg.ray.columnar != "local",
                   self.out, self.cfg, result.manifests, tables, self.scorers)
        return summary


def run_remote(fn: Callable, on_ray: bool, *args):
    """`fn(*args)` in a Ray task (off the driver: it reads whole tables) or here."""
    if not on_ray:
        return fn(*args)
    import ray

    return ray.get(ray.remote(fn).options(num_cpus=1).remote(*args))


def build(cfg: BuildConfig, stages: list[str] | None = None, reporter: Reporter | None = None) -> BuildResult:
    """Run the build (all stages, or the named ones) and return where everything landed."""
    return Build(cfg, reporter).run(stages)


__all__ = ["STAGES", "Build", "BuildResult", "StageInputError", "Stage", "build", "parse_stages"]
