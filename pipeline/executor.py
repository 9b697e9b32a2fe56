"""The executor: runs a stage's pending units on Ray (or in this process) and keeps its tables compact.

For each stage: plan the units, skip those with a done marker (O(units) metadata reads), run the rest
(an actor pool for model stages, tasks for columnar ones), check the failure share as units finish,
compact the output tables, then `finalize`. The driver only ever holds unit descriptors and their
small records; rows are read and written by the workers. docs/architecture.md, "Stages" and "Tables and resume".
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

from pipeline.catalogue import PART_ROWS, Table
from pipeline.errors import ErrorPolicy
from pipeline.report import NullReporter, Reporter, StageSummary
from pipeline.stage import Stage, run_unit
from schemas.units import Unit, UnitStats

# Ray Data blocks per actor stage: one unit each up to this many units, then several units a block.
# Ray Data's scheduling loop on the driver walks its block queues at every step for as long as the
# stage runs, so its cost per unit grows with the blocks in flight (benchmarks/actor_dispatch.py);
# a block of several units is still retried unit by unit (a unit already written is skipped).
MAX_BLOCKS = 200


class _Actor:
    """The Ray Data callable class wrapping a stage: constructed on the actor, so `setup` runs there.

    The stage rides on a per-run subclass (see `_actor_class`), pickled with the class, so
    constructing an actor costs no argument transfer. Ray Data still keeps that class in the object
    store (hence Ray's "constructor arguments in the object store" warning); the driver holds it for
    the whole stage, so an actor restarted on another node after its node died finds it (the node-loss
    tests in tests/test_multinode.py).
    """

    stage_template: Stage

    def __init__(self):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            import torch

            torch.set_num_threads(max(1, int(self.stage_template.resources.num_cpus)))
        except ImportError:  # pragma: no cover - torch is a dependency; model-free stages do not need it
            pass
        self.stage = self.stage_template
        self.stage.setup()

    def __call__(self, batch: dict) -> dict:
        return {"record": [json.dumps(run_unit(self.stage, Unit.from_json(str(u)))) for u in batch["unit"]]}


def _actor_class(stage: Stage) -> type[_Actor]:
    return type(f"{type(stage).__name__}Actor", (_Actor,), {"stage_template": stage})


def _compact(table: Table, keep: set[str] | None) -> int:
    return table.compact(keep)


class Executor:
    """Runs stages. `use_ray`: Ray is initialised (actor stages need it; task stages may use it)."""

    def __init__(self, reporter: Reporter | None = None, policy: ErrorPolicy | None = None, use_ray: bool = True):
        self.reporter = reporter or NullReporter()
        self.policy = policy or ErrorPolicy()
        self.use_ray = use_ray

    def run(self, stage: Stage) -> StageSummary:
        return self.run_group([stage])[0]

    def run_group(self, stages: list[Stage]) -> list[StageSummary]:
        """Stages writing the same tables (e.g. one generate stage per generator): each runs its units,
        then the shared tables are compacted once, keeping the units of every plan."""
        plans = [stage.plan() for stage in stages]
        keep: dict[str, set[str] | None] = {}
        tables: dict[str, Table] = {}
        for stage, units in zip(stages, plans):
            for t in stage.outputs():
                tables[t.folder] = t
                if not stage.prune:
                    keep[t.folder] = None
                elif keep.get(t.folder, set()) is not None:
                    keep[t.folder] = keep.get(t.folder, set()) | {u.id for u in units}
        runs = [self._run_units(stage, units) for stage, units in zip(stages, plans)]
        self._wait([self._compact_async(t, keep[f]) for f, t in tables.items()])
        summaries = []
        for stage, units, (stats, rows_now, before, seconds) in zip(stages, plans, runs):
            t0 = time.perf_counter()
            records = stage.outputs()[0].records()
            note = stage.finalize({u.id: records[u.id] for u in units if u.id in records})
            summary = StageSummary(
                stage.name, n_in=stats.n_in, n_out=stats.n_out, dropped={**stats.dropped, **stats.failed},
                seconds=seconds + time.perf_counter() - t0, units=len(units), units_run=len(units) - len(before),
                now=rows_now, before=sum(r.unit_stats.n_in for r in before), detail=note,
            )
            summary.recount(stage.verb)
            summaries.append(summary)
        return summaries

    def _run_units(self, stage: Stage, units: list[Unit]):
        t0 = time.perf_counter()
        out = stage.outputs()[0]
        done = out.records()
        pending = [u for u in units if u.id not in done]
        before = [done[u.id] for u in units if u.id in done]
        stats = UnitStats()
        for rec in before:
            stats.add(rec.unit_stats)
        self.reporter.start(stage.name, sum(u.rows for u in units))
        self.reporter.advance(sum(u.rows for u in units if u.id in done))
        rows_now, loose, compaction = 0, 0, None
        by_id = {u.id: u for u in pending}
        for rec in self._dispatch(stage, pending):
            unit_stats = UnitStats.from_json(rec["stats"])
            stats.add(unit_stats)
            rows_now += unit_stats.n_in
            self.reporter.advance(by_id[rec["id"]].rows)
            self.policy.check(stage.name, stats)
            loose += rec["rows"]
            if loose >= PART_ROWS and compaction is None:  # keep the file count bounded while it runs
                compaction = [self._compact_async(t, None) for t in stage.outputs()]
                loose = 0
            elif compaction is not None and self._ready(compaction):
                compaction = None
        if compaction is not None:
            self._wait(compaction)
        return stats, rows_now, before, time.perf_counter() - t0

    # -- dispatch ---------------------------------------------------------------------------------
    def _dispatch(self, stage: Stage, units: list[Unit]) -> Iterator[dict]:
        if not units:
            return
        if stage.kind == "actor":
            yield from self._actor_pool(stage, units)
        elif self.use_ray and getattr(stage, "on_ray", lambda _: False)(units):
            yield from self._tasks(stage, units)
        else:
            stage.setup()
            for u in units:
                yield run_unit(stage, u)

    def _actor_pool(self, stage: Stage, units: list[Unit]) -> Iterator[dict]:
        import ray

        from pipeline.ray_runtime import check_resources

        res = stage.resources
        check_resources(stage.name, res.num_gpus, res.num_cpus)
        items = [{"unit": u.to_json()} for u in units]
        blocks = min(len(items), max(MAX_BLOCKS, 8 * res.num_actors))  # enough blocks to balance a large pool
        ds = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
            _actor_class(stage),
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=min(res.num_actors, len(units))),
            num_gpus=res.num_gpus,
            num_cpus=res.num_cpus,
        )
        for row in ds.iter_rows():
            yield json.loads(row["record"])

    def _tasks(self, stage: Stage, units: list[Unit]) -> Iterator[dict]:
        import ray

        remote = ray.remote(_run_task).options(num_cpus=stage.resources.num_cpus, max_retries=3)
        ref = ray.put(stage)
        limit = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        pending: list = []
        queue = iter(units)
        unit = next(queue, None)
        while unit is not None or pending:
            while unit is not None and len(pending) < limit:
                pending.append(remote.remote(ref, unit.to_json()))
                unit = next(queue, None)
            ready, pending = ray.wait(pending, num_returns=1)
            yield ray.get(ready[0])

    # -- compaction -------------------------------------------------------------------------------
    def _compact_async(self, table: Table, keep: set[str] | None):
        if not self.use_ray:
            return _compact(table, keep)
        import ray

        return ray.remote(_compact).options(num_cpus=0.5, max_retries=3).remote(table, keep)

    def _ready(self, refs: list) -> bool:
        if not self.use_ray:
            return True
        import ray

        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        return len(ready) == len(refs)

    def _wait(self, refs: list) -> None:
        if self.use_ray:
            import ray

            ray.get(refs)


def _run_task(stage: Stage, unit_json: str) -> dict:
    stage.setup()
    return run_unit(stage, Unit.from_json(unit_json))
