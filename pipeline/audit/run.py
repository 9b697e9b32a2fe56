"""The audit driver: plan units -> score them on Ray (resumable) -> analyse -> export -> report.

    run_audit("pickapic_v2/", "audit-out/", load_audit_config(None))

Scoring is a model stage on the build's executor (`pipeline/executor.py`): its table lives in
`DIR/scores/<key>/` (the catalogue's unit files and compacted parts), so a rerun (after a kill, or
with a larger --limit) scores only the units not there yet.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline import models
from pipeline.audit.analyse import classify, summarise
from pipeline.audit.export import export_subsets
from pipeline.audit.read import AuditInputError, Source, discover, plan_units, read_rows
from pipeline.audit.report import render_report, thumbnail_uri
from pipeline.audit.stage import MODEL_ERROR, READ_ERROR, AuditScoreStage
from pipeline.catalogue import Table
from pipeline.errors import ErrorPolicy
from pipeline.executor import Executor
from pipeline.locks import FolderLock
from pipeline.ray_runtime import init_ray
from pipeline.report import NullReporter, Reporter, StageSummary
from pipeline.stage import run_unit
from pipeline.store import write_bytes
from schemas.audit import SCORED, AuditConfig, audit_scores_schema


@dataclass
class AuditResult:
    out_dir: Path
    summary: dict
    units_run: int = 0
    summaries: list[StageSummary] = field(default_factory=list)

    @property
    def report(self) -> Path:
        return self.out_dir / "report.html"


def scores_folder(out: Path, cfg: AuditConfig, allow_outside: bool = False) -> Path:
    """Where the score table of `cfg` lives: keyed by what changes a score (models, pixel and frame
    limits, frames per video, whether image paths may leave the data folder), so a rerun with other
    reward models starts afresh instead of mixing tables."""
    parts = [[r.model_dump(mode="json") for r in cfg.reward_models], cfg.max_pixels, cfg.max_video_frames, cfg.video_frames]
    key = json.dumps(parts + (["allow_outside"] if allow_outside else []), sort_keys=True)
    return out / "scores" / hashlib.sha256(key.encode()).hexdigest()[:12]


def model_specs(cfg: AuditConfig) -> list[tuple[str, str, str, dict]]:
    """(name, path or hub id, dtype, options) of every reward model, before Ray starts: a local path
    that does not exist is refused here with one line (`pipeline.model_sources`, as the build does)
    instead of in an actor; tiny models are built into the cache."""
    from pipeline.model_sources import check_reward_models

    check_reward_models(cfg.reward_models, "audit config")
    cache = Path(cfg.cache_dir) if cfg.cache_dir else models.default_cache_dir()
    return [(r.name, models.reward_model_path(r.name, r.model, cache), r.dtype, dict(r.options)) for r in cfg.reward_models]


def _record_unscoreable(stage: AuditScoreStage, table: Table, units: list) -> int:
    """Write here, without Ray or models, the units of pair files whose every row the planner already
    refused (a path outside the folder, a FIFO, a bad label): nothing of them needs an actor."""
    done, n = table.records(), 0
    for unit in units:
        rows = unit.param("unit").get("rows")
        if unit.id not in done and rows is not None and all(r.get("status") for r in rows):
            run_unit(stage, unit)
            n += 1
    return n


def _one_line(err: Exception) -> str | None:
    """The one line of an actor's file or model error inside Ray's wrapped exception, if it is one."""
    for marker in (READ_ERROR, MODEL_ERROR):
        line = next((ln for ln in str(err).splitlines() if marker in ln), None)
        if line is not None:
            return line[line.index(marker) + len(marker):]
    return None


def _rows_by_source(frame) -> dict[int, np.ndarray]:
    return {int(s): g["row"].to_numpy() for s, g in frame.groupby("source")}


def _examples(sources: list[Source], classified, scorers: list[str], cfg: AuditConfig, allow_outside: bool) -> list[dict]:
    """The report's conflicting pairs: most dissenters first (all models against the label leads)."""
    if cfg.examples == 0:
        return []
    picked = classified[~classified["consistent"]].sort_values(["dissenters", "row_id"], ascending=[False, True]).head(cfg.examples)
    out = []
    for index, group in picked.groupby("source", sort=True):
        raw = read_rows(sources[index], int(index), [int(r) for r in group["row"]], allow_outside)
        for rec in group.to_dict("records"):
            r = raw.get(int(rec["row"]), {})
            ex = {**rec, "file": Path(sources[index].path).name, "caption": r.get("caption")}
            for side in (0, 1):
                data = r.get(f"img_{side}")
                ex[f"thumb_{side}"] = thumbnail_uri(data, cfg.thumbnail_px, cfg.max_pixels, bool(r.get("video"))) if data else None
            out.append(ex)
    return sorted(out, key=lambda e: (-e["dissenters"], e["row_id"]))


def run_audit(data: str | Path, out: str | Path, cfg: AuditConfig, limit: int | None = None,
              reporter: Reporter | None = None, allow_outside: bool = False) -> AuditResult:
    """One audit at a time per output folder (docs/reliability.md, "Concurrency"); see `_run_audit`."""
    out = Path(out).resolve()
    sources = discover(data)  # input that cannot be audited fails here, before `out` is created
    units = plan_units(sources, cfg.unit_rows, limit, allow_outside)
    if not units:
        raise AuditInputError(f"{data}: no rows to audit ({len(sources)} input file(s), all empty)")
    with FolderLock(out, "audit"):
        return _run_audit(data, out, cfg, limit, reporter or NullReporter(), allow_outside, sources, units)


def _run_audit(data: str | Path, out: Path, cfg: AuditConfig, limit: int | None, reporter: Reporter,
               allow_outside: bool, sources: list[Source], units: list) -> AuditResult:
    """Audit `data` into `out`: summary.json, report.html, consistent.parquet, conflicting.parquet.

    `allow_outside`: image paths of a jsonl/csv may resolve outside its folder (absolute paths,
    `../`, symlinks out); by default such a row is skipped unread. Input that cannot be audited at
    all raises AuditInputError with one line naming the file (and line, rows or member)."""
    scorers = cfg.scorer_names
    table = Table(str(scores_folder(out, cfg, allow_outside)), audit_scores_schema(scorers))
    result = AuditResult(out, {})

    t0 = time.perf_counter()
    stage = AuditScoreStage(
        resources=cfg.resources,
        models=[(r.name, r.model, r.dtype, dict(r.options)) for r in cfg.reward_models],  # paths resolved below
        max_pixels=cfg.max_pixels,
        max_video_frames=cfg.max_video_frames,
        video_frames=cfg.video_frames,
        read_units=units,
        scores=table,
    )
    planned = stage.plan()
    recorded = _record_unscoreable(stage, table, planned)
    done = table.records()
    if any(u.id not in done for u in planned):  # models are needed: check their paths (tiny ones built) before Ray
        stage.models = model_specs(cfg)
        init_ray(cfg.ray, log_file=out / "logs" / "ray.log")  # the terminal keeps vipo's lines
    import ray

    # Bad rows are data, not failures: they are counted by reason, never a reason to stop.
    executor = Executor(reporter, ErrorPolicy(max_share=1.0), use_ray=ray.is_initialized())
    try:
        run = executor.run(stage)
    except Exception as err:  # a file the actor cannot read, a model it cannot load: one line, not Ray's traceback
        line = _one_line(err)
        if line is None:
            raise
        raise AuditInputError(line) from None
    result.units_run = run.units_run + recorded

    records = table.records()
    df = table.read(records=[records[u.id] for u in planned]).to_pandas()
    # a file's index in this run's list (a folder may have gained files since a unit was scored)
    df["source"] = df["row_id"].str.partition(":")[0].map({s.key: i for i, s in enumerate(sources)}).astype("int32")
    summary = summarise(df, scorers)
    score_summary = StageSummary("score", n_in=len(df), n_out=summary["pairs_scored"],
                                 dropped={k: v for k, v in summary["skipped"].items() if v},
                                 seconds=time.perf_counter() - t0, note=f"{result.units_run} of {run.units} unit(s) run")
    reporter.finish(score_summary)

    t1 = time.perf_counter()
    reporter.start("export", summary["pairs_scored"])
    classified = classify(df, scorers)
    exports = export_subsets(sources, _rows_by_source(classified[classified["consistent"]]),
                             _rows_by_source(classified[~classified["consistent"]]), out)
    reporter.advance(summary["pairs_scored"])
    summary = {"input": str(data), "sources": [s.path for s in sources], "kind": sources[0].kind,
               "limit": limit, **summary, "exports": exports,
               "config": cfg.model_dump(mode="json", exclude={"ray", "cache_dir"})}
    write_bytes(out / "summary.json", json.dumps(summary, indent=2).encode())
    skipped = df[df["status"] != SCORED].sort_values("row_id").head(50)
    skipped_rows = [{"file": Path(sources[int(r["source"])].path).name, "row": int(r["row"]), "reason": r["status"],
                     "detail": r["detail"]} for r in skipped.to_dict("records")]
    html = render_report(summary, _examples(sources, classified, scorers, cfg, allow_outside), skipped_rows)
    write_bytes(out / "report.html", html.encode("utf-8"))
    export_summary = StageSummary("export", n_in=summary["pairs_scored"], n_out=exports["consistent"] + exports["conflicting"],
                                  seconds=time.perf_counter() - t1,
                                  note=f"consistent {exports['consistent']}, conflicting {exports['conflicting']}")
    reporter.finish(export_summary)
    result.summary = summary
    result.summaries = [score_summary, export_summary]
    return result
