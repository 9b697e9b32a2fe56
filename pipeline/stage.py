"""The stage protocol: what a step of a graph declares and does (docs/architecture.md, "Stages").

A stage is a small picklable dataclass: table handles, paths and settings. The executor calls
`plan()` on the driver (unit descriptors, from footers and manifests, never rows), runs `process(unit)`
on a worker (which reads its own rows and returns the unit's output rows), and `finalize()` once all
units are done. Models are loaded in `setup()`, on the worker, once; never at construction, so a
stage pickles cheaply to every worker.

Two kinds: `ActorStage` (model stages: a Ray Data actor pool, one model per actor) and `TaskStage`
(columnar stages: Ray tasks, or in this process for small builds: the same tables either way).
Counters go through one API (`count`, `drop`, `fail`); every summary line is made from them.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import ClassVar

import pyarrow as pa

from pipeline.catalogue import Table, UnitRecord
from pipeline.errors import ItemFailure
from schemas.config import ResourceConfig
from schemas.errors import VipoError
from schemas.units import Unit, UnitStats


class StageInputError(VipoError, RuntimeError):
    """A stage was asked to run before the stage that makes its input."""


@dataclass
class Stage(abc.ABC):
    """One step: declares its output tables and resources, plans units, processes one unit at a time."""

    resources: ResourceConfig = field(default_factory=ResourceConfig)

    name: ClassVar[str] = "stage"
    kind: ClassVar[str] = "task"  # "actor" (model stage) or "task" (columnar)
    verb: ClassVar[str] = "done"  # "(N <verb> now, M already there)" in the summary line
    prune: ClassVar[bool] = True  # at the end, remove units the current plan no longer has from the outputs

    # -- declared ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def outputs(self) -> tuple[Table, ...]:
        """The tables this stage writes; the first holds each unit's done marker and stats."""

    @abc.abstractmethod
    def plan(self) -> list[Unit]:
        """Every unit of the work (finished or not), from metadata only; raises StageInputError."""

    def need(self, table: Table | None, maker: str) -> dict[str, UnitRecord]:
        """The finished units of an input table; StageInputError when there are none."""
        recs = table.records() if table is not None else {}
        if not recs:
            where = table.folder if table is not None else "its input table"
            raise StageInputError(f"stage {self.name!r} needs {where}; run the {maker!r} stage first")
        return recs

    # -- on the worker ------------------------------------------------------------------------------
    def setup(self) -> None:
        """Load models; runs on the worker, once, never on the driver."""

    @abc.abstractmethod
    def process(self, unit: Unit) -> pa.Table | dict[str, pa.Table]:
        """One unit's output rows (by output table name when there are several)."""

    # -- on the driver, after every unit ------------------------------------------------------------
    def finalize(self, records: dict[str, UnitRecord]) -> str:
        """Columnar work over the finished units (`records`: this run's units by id); returns a note."""
        return ""

    # -- counters -----------------------------------------------------------------------------------
    @property
    def stats(self) -> UnitStats:
        if getattr(self, "_stats", None) is None:
            self._stats = UnitStats()
        return self._stats

    def count(self, n_in: int = 0, n_out: int = 0) -> None:
        self.stats.n_in += n_in
        self.stats.n_out += n_out

    def drop(self, reason: str, n: int = 1) -> None:
        """`n` items removed by a rule (they are rows of the output with this reason)."""
        if n:
            self.stats.dropped[reason] = self.stats.dropped.get(reason, 0) + n

    def fail(self, failure: ItemFailure) -> None:
        """An item that could not be processed (a row of the output with the failure's reason)."""
        s = self.stats
        s.failed[failure.reason] = s.failed.get(failure.reason, 0) + 1
        if len(s.examples) < UnitStats.MAX_EXAMPLES:
            s.examples.append(f"{failure.item}: {failure.reason}: {failure.message}"[:300])


@dataclass
class ActorStage(Stage):
    """A model stage: its units run on a Ray Data actor pool (`resources`: actors, CPUs/GPUs each)."""

    kind: ClassVar[str] = "actor"


@dataclass
class TaskStage(Stage):
    """A columnar stage: each unit is one Ray task, or runs in this process for small builds (the
    same `process`, so the same tables either way)."""

    engine: str = "auto"  # "local", "ray", or "auto": Ray from `ray_min_rows` input rows on
    ray_min_rows: int = 100_000

    kind: ClassVar[str] = "task"

    def on_ray(self, units: list[Unit]) -> bool:
        return self.engine == "ray" or (self.engine == "auto" and sum(u.rows for u in units) >= self.ray_min_rows)


def run_unit(stage: Stage, unit: Unit) -> dict:
    """Process one unit on a worker and write its outputs; returns its record (id, rows, stats).

    Secondary outputs are written first and the first output last: its file is the done marker, so a
    unit killed half-way is simply run again, and one Ray retries after its result was lost (a node
    died after the write) is not.
    """
    outs = stage.outputs()
    done = outs[0].loose_record(unit.id)
    if done is not None:
        return {"id": unit.id, "rows": done.rows, "stats": done.stats, "loose": True}
    stage._stats = UnitStats()
    result = stage.process(unit)
    tables = result if isinstance(result, dict) else {outs[0].name: result}
    for table in outs[1:]:
        table.write_unit(unit.id, tables.get(table.name, table.schema.empty_table()), UnitStats())
    rec = outs[0].write_unit(unit.id, tables[outs[0].name], stage.stats)
    return {"id": unit.id, "rows": rec.rows, "stats": rec.stats, "loose": True}
