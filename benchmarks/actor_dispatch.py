"""What the driver pays to feed an actor stage, by how many Ray Data blocks carry its units.

An actor stage's units go to Ray Data as blocks (`pipeline.executor.MAX_BLOCKS`). Ray Data's
streaming executor runs its scheduling loop on the driver for as long as the stage runs, and each
step walks its queues of blocks, so with one block per unit the driver's CPU per unit grows with the
number of units. Here a model-free actor stage (each unit sleeps `--work-ms`, as a model would
compute, and writes one row) runs the same units twice in one Ray session, side by side:

  1. one block per unit;
  2. at most `MAX_BLOCKS` blocks (several units per block; each unit still has its own done marker).

Prints the driver's main-thread CPU, its process CPU and the wall time of each, per unit, and the
ratios. The two runs write the same rows (checked).

    python benchmarks/actor_dispatch.py --units 1500 --work-ms 10
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pyarrow as pa

from pipeline import executor as executor_module
from pipeline.catalogue import Table
from pipeline.executor import Executor
from pipeline.ray_runtime import init_ray
from pipeline.stage import ActorStage
from schemas.config import RayConfig, ResourceConfig
from schemas.units import Unit, make_unit

SCHEMA = pa.schema([("unit", pa.int64()), ("value", pa.int64())])


@dataclass
class SleepStage(ActorStage):
    """Unit k: sleep `work_ms` (the model's time), then one row (k, k * k)."""

    out: Table | None = None
    n_units: int = 100
    work_ms: float = 10.0
    name: ClassVar[str] = "sleep"
    verb: ClassVar[str] = "slept"

    def outputs(self):
        return (self.out,)

    def plan(self) -> list[Unit]:
        return [make_unit("sleep", (k,), key="", rows=1, k=k) for k in range(self.n_units)]

    def setup(self) -> None:
        pass

    def process(self, unit: Unit) -> pa.Table:
        time.sleep(self.work_ms / 1000)
        k = unit.param("k")
        self.count(n_in=1, n_out=1)
        return pa.table({"unit": [k], "value": [k * k]}, schema=SCHEMA)


def run(folder: Path, units: int, work_ms: float, max_blocks: int) -> dict:
    executor_module.MAX_BLOCKS = max_blocks
    stage = SleepStage(resources=ResourceConfig(num_gpus=0, num_cpus=1, num_actors=2), out=Table(str(folder), SCHEMA),
                       n_units=units, work_ms=work_ms)
    m0, c0, t0 = time.thread_time(), time.process_time(), time.perf_counter()
    summary = Executor(use_ray=True).run(stage)
    out = {"main": time.thread_time() - m0, "cpu": time.process_time() - c0, "wall": time.perf_counter() - t0,
           "rows": stage.out.read().sort_by("unit"), "units_run": summary.units_run}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--units", type=int, default=1500)
    ap.add_argument("--work-ms", type=float, default=10.0, help="each unit's time on the actor")
    args = ap.parse_args()
    init_ray(RayConfig(num_cpus=2))
    work = Path(tempfile.mkdtemp(prefix="vipo-dispatch-"))
    cap = executor_module.MAX_BLOCKS
    run(work / "warm", 8, args.work_ms, cap)  # Ray Data's first dataset pays its imports and actors
    one = run(work / "per-unit", args.units, args.work_ms, args.units)
    capped = run(work / "capped", args.units, args.work_ms, cap)
    assert one["rows"].equals(capped["rows"]) and one["units_run"] == capped["units_run"] == args.units
    n = args.units
    print(f"{n} units of {args.work_ms:g} ms on 2 actors; MAX_BLOCKS = {cap}")
    print(f"{'blocks':<22}{'main CPU ms/unit':>18}{'process CPU ms/unit':>22}{'wall s':>9}")
    for label, r in ((f"one per unit ({n})", one), (f"capped ({min(n, cap)})", capped)):
        print(f"{label:<22}{r['main'] / n * 1e3:>18.2f}{r['cpu'] / n * 1e3:>22.2f}{r['wall']:>9.1f}")
    print(f"ratio per-unit / capped: main CPU {one['main'] / capped['main']:.2f}x, process CPU "
          f"{one['cpu'] / capped['cpu']:.2f}x, wall {one['wall'] / capped['wall']:.2f}x")


if __name__ == "__main__":
    main()
