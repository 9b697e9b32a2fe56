"""The catalogue and the executor without models: unit files as done markers, compaction into bounded
parts (and every crash window of it), pruning to the current plan, slices that read a unit back,
resume after a failure mid-stage, and the same tables in this process and on Ray tasks."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from pipeline.catalogue import Table, read_slices
from pipeline.executor import Executor
from pipeline.stage import TaskStage
from schemas.units import Unit, UnitStats, make_unit

SCHEMA = pa.schema([("id", pa.string()), ("category", pa.string()), ("x", pa.int64())])


def _rows(unit: int, n: int, category: str = "aesthetics") -> pa.Table:
    return pa.table({"id": [f"{unit:04d}-{i:04d}" for i in range(n)], "category": [category] * n,
                     "x": list(range(unit * 1000, unit * 1000 + n))}, schema=SCHEMA)


def _table(tmp_path: Path, units: dict[str, pa.Table]) -> Table:
    t = Table(str(tmp_path / "t"), SCHEMA, cluster_by="category")
    for uid, rows in units.items():
        t.write_unit(uid, rows, UnitStats(n_in=rows.num_rows, n_out=rows.num_rows))
    return t


def _ids(t: Table) -> list[str]:
    return sorted(t.read(["id"])["id"].to_pylist())


def test_units_compact_into_bounded_parts_and_read_back_by_slice(tmp_path):
    units = {f"u{k:02d}": _rows(k, 30, "composition" if k % 2 else "aesthetics") for k in range(10)}
    t = _table(tmp_path, units)
    assert set(t.records()) == set(units) and t.num_rows() == 300
    assert t.compact(part_rows=100) == 4  # whole units, never split: 90 + 90 + 90 + 30 rows
    assert not list((tmp_path / "t" / "_units").glob("*.parquet"))
    parts = sorted((tmp_path / "t").glob("part-*.parquet"))
    assert len(parts) == 4
    recs = t.records()
    assert set(recs) == set(units)
    for uid, rows in units.items():  # a unit's slice is exactly its rows, wherever compaction put them
        assert read_slices([recs[uid].slice]).equals(rows)
        assert recs[uid].unit_stats.n_in == 30 and recs[uid].cluster == rows["category"][0].as_py()
    # clustered: a part's units are ordered by (category, id)
    first = pq.read_table(parts[0])
    assert first["category"].to_pylist() == sorted(first["category"].to_pylist())
    # a plain parquet reader sees exactly the rows, each once
    assert sorted(pq.read_table(tmp_path / "t")["id"].to_pylist()) == _ids(t) and len(_ids(t)) == 300
    assert t.read(["x"], filter=ds.field("category") == "composition").num_rows == 150


def test_compacting_a_compact_table_writes_nothing(tmp_path):
    t = _table(tmp_path, {"a": _rows(1, 5), "b": _rows(2, 5)})
    t.compact()
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "t").rglob("*.parquet")}
    assert t.compact() == 0 and t.compact(keep={"a", "b"}) == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "t").rglob("*.parquet")} == before


def test_keep_prunes_units_of_an_earlier_plan(tmp_path):
    t = _table(tmp_path, {"a": _rows(1, 5), "b": _rows(2, 5), "c": _rows(3, 5)})
    t.compact()
    t.write_unit("d", _rows(4, 5), UnitStats())
    t.compact(keep={"a", "c", "d"})
    assert set(t.records()) == {"a", "c", "d"}
    assert _ids(t) == sorted(_rows(1, 5)["id"].to_pylist() + _rows(3, 5)["id"].to_pylist() + _rows(4, 5)["id"].to_pylist())
    assert sorted(pq.read_table(tmp_path / "t")["id"].to_pylist()) == _ids(t)


def test_small_parts_are_merged_as_units_arrive(tmp_path):
    t = _table(tmp_path, {"a": _rows(1, 5)})
    t.compact()
    for k in range(2, 6):
        t.write_unit(f"u{k}", _rows(k, 5), UnitStats())
        t.compact()
    assert len(list((tmp_path / "t").glob("part-*.parquet"))) == 1 and t.num_rows() == 25


def test_every_crash_window_of_compaction_resolves_each_unit_once(tmp_path, monkeypatch):
    units = {f"u{k}": _rows(k, 4) for k in range(4)}
    t = _table(tmp_path, units)
    real_atomic = __import__("pipeline.catalogue", fromlist=["write_atomic"]).write_atomic
    calls = {"n": 0}

    def dies_on_part(path, write):  # killed after the manifest landed, before the part did
        if Path(path).name.startswith("part-"):
            raise KeyboardInterrupt("killed")
        return real_atomic(path, write)

    monkeypatch.setattr("pipeline.catalogue.write_atomic", dies_on_part)
    with pytest.raises(KeyboardInterrupt):
        t.compact()
    monkeypatch.setattr("pipeline.catalogue.write_atomic", real_atomic)
    assert set(t.records()) == set(units) and len(_ids(t)) == 16  # a manifest without its part is ignored
    assert all(Path(r.path).parent.name == "_units" for r in t.records().values())

    real_unlink = Path.unlink

    def dies_before_cleanup(self, *a, **k):  # part and manifest landed, its sources not yet removed
        if self.parent.name != "_units":
            return real_unlink(self, *a, **k)
        calls["n"] += 1
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(Path, "unlink", dies_before_cleanup)
    with pytest.raises(KeyboardInterrupt):
        t.compact()
    monkeypatch.undo()
    assert calls["n"] >= 1
    recs = t.records()
    assert set(recs) == set(units) and len(_ids(t)) == 16  # covered unit files are not counted twice
    assert all(Path(r.path).name.startswith("part-") for r in recs.values())
    t.compact()
    assert not list((tmp_path / "t" / "_units").glob("*.parquet")) and len(_ids(t)) == 16


# -- the executor ------------------------------------------------------------------------------------
@dataclass
class Squares(TaskStage):
    """A columnar stage in miniature: unit k squares the numbers of its range; `fail_at` raises there."""

    out: Table | None = None
    n_units: int = 6
    fail_at: int | None = None
    name: ClassVar[str] = "squares"
    verb: ClassVar[str] = "squared"

    def outputs(self):
        return (self.out,)

    def plan(self) -> list[Unit]:
        return [make_unit("squares", (k,), key="aesthetics", rows=10, k=k) for k in range(self.n_units)]

    def process(self, unit: Unit) -> pa.Table:
        k = unit.param("k")
        if k == self.fail_at:
            raise RuntimeError(f"unit {k} dies")
        xs = list(range(10 * k, 10 * k + 10))
        self.count(n_in=10, n_out=sum(x % 3 != 0 for x in xs))
        self.drop("multiple_of_3", sum(x % 3 == 0 for x in xs))
        return pa.table({"id": [f"{x:04d}" for x in xs], "category": ["aesthetics"] * 10, "x": [x * x for x in xs]}, schema=SCHEMA)


def test_executor_resumes_after_a_failed_unit_and_counts_from_the_markers(tmp_path):
    t = Table(str(tmp_path / "sq"), SCHEMA, cluster_by="category")
    with pytest.raises(RuntimeError, match="unit 3 dies"):
        Executor(use_ray=False).run(Squares(out=t, fail_at=3))
    assert len(t.records()) == 3  # units 0..2 finished and kept their markers
    summary = Executor(use_ray=False).run(Squares(out=t))
    assert (summary.units, summary.units_run) == (6, 3)
    assert summary.note == "(30 squared now, 30 already there)"
    assert (summary.n_in, summary.n_out, summary.dropped) == (60, 40, {"multiple_of_3": 20})
    assert sorted(t.read(["x"])["x"].to_pylist()) == [x * x for x in range(60)]
    again = Executor(use_ray=False).run(Squares(out=t))
    assert again.units_run == 0 and again.note == "(0 squared now, 60 already there)" and again.n_out == 40
    assert len(list((tmp_path / "sq").rglob("*.parquet"))) == 2  # one part + its manifest


def test_executor_on_ray_tasks_writes_the_same_table(ray_session, tmp_path):
    import sys

    ray_session.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the stage class lives in this test
    local = Table(str(tmp_path / "local"), SCHEMA, cluster_by="category")
    remote = Table(str(tmp_path / "remote"), SCHEMA, cluster_by="category")
    Executor(use_ray=False).run(Squares(out=local))
    Executor(use_ray=True).run(Squares(out=remote, engine="ray"))
    assert local.read().sort_by("id").equals(remote.read().sort_by("id"))
    assert os.listdir(tmp_path / "remote" / "_units") == []


def test_a_unit_retried_after_its_file_landed_is_not_processed_again(tmp_path):
    """Ray retries a task whose result was lost (its node died after the write): run_unit returns the
    unit's record from its file; once the file is gone (a cleared table), the unit runs again."""
    from pipeline.stage import run_unit

    stage = Squares(out=Table(str(tmp_path / "sq"), SCHEMA, cluster_by="category"))
    unit = stage.plan()[2]
    first = run_unit(stage, unit)
    calls = []
    stage.process = lambda u: calls.append(u.id) or pytest.fail("processed again")
    assert run_unit(stage, unit) == first and calls == []
    stage.out.clear()
    del stage.process
    assert run_unit(stage, unit) == first and stage.out.loose_record(unit.id) is not None
