"""Throughput of `audit` against the bare five-model forward passes on the same pairs.

Runs the same pairs three ways, side by side in one process, one torch thread each:
  1. bare: the five tiny reward models loaded once, and only their `score(images, prompts)` calls
     timed, on images decoded beforehand, in the audit's batches (each call scores the batch's
     images 0 and images 1 together);
  2. stage, steady state: the audit's actor stage (`AuditScoreStage`) run in this process, models
     loaded first (untimed), then every unit timed: its own parquet reads, row checks, bounded
     decoding, all five models, the arrow output. 1 and 2 run interleaved unit by unit
     (alternating which goes first), so a shared machine's load falls on both alike;
  3. audit end to end: `run_audit` on Ray (one actor, num_cpus=1) on the same parquet: actor start,
     model load, units, part files, then analysis, exports and report.html. Ray is started before
     the clock.
Prints pairs/s of each and their ratios to bare. (The time to Ray's first output block is printed
for information only: Ray Data hands blocks over in bursts, so it is no clean start-up figure.)

    python benchmarks/audit_throughput.py --pairs 256 --size 256 --batch-size 8 --unit-rows 32
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import ray
import torch
import transformers

from pipeline import models
from pipeline.audit.read import discover, plan_units
from pipeline.audit.run import run_audit
from pipeline.audit.sample import write_sample
from pipeline.audit.stage import AuditScoreStage
from pipeline.media import decode_image
from reward_models.registry import reward_model_class
from schemas.audit import parse_audit_config
from schemas.tables import REWARD_MODEL_NAMES


class Clock:
    """A Reporter that timestamps the score phase: start, first unit landed, finish."""

    def __init__(self):
        self.marks: dict[str, float] = {}
        self.stage = ""

    def start(self, stage: str, total: int) -> None:
        self.stage = stage
        self.marks[f"{stage}_start"] = time.perf_counter()

    def advance(self, n: int = 1) -> None:
        if self.stage == "score" and n and "score_first" not in self.marks:
            self.marks["score_first"] = time.perf_counter()

    def finish(self, summary) -> None:
        self.marks[f"{self.stage}_end"] = time.perf_counter()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=256, help="pairs to audit")
    ap.add_argument("--size", type=int, default=256, help="image side (px)")
    ap.add_argument("--batch-size", type=int, default=8, help="pairs per model call")
    ap.add_argument("--unit-rows", type=int, default=32, help="rows per work unit")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="vipo-audit-bench-"))
    data = write_sample(work / "pairs.parquet", rows=args.pairs, size=args.size, planted=False, row_group_size=128)
    cache = models.default_cache_dir()
    paths = {name: models.reward_model_path(name, "tiny", cache) for name in REWARD_MODEL_NAMES}

    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(1)  # the actor gets num_cpus=1 -> one torch thread; compare like with like
    cfg = parse_audit_config({"cache_dir": str(cache), "unit_rows": args.unit_rows, "examples": 12,
                              "resources": {"num_cpus": 1, "num_actors": 1, "batch_size": args.batch_size}})
    units = plan_units(discover(data), cfg.unit_rows)
    # the stage and the bare models load the same checkpoints (two copies, so neither warms the other's caches)
    stage = AuditScoreStage(resources=cfg.resources, models=[(n, p, "float32", {}) for n, p in paths.items()],
                            max_pixels=cfg.max_pixels)
    t0 = time.perf_counter()
    stage.setup()
    load = time.perf_counter() - t0
    loaded = [reward_model_class(name).from_pretrained(path) for name, path in paths.items()]
    table = pq.read_table(data, columns=["caption", "jpg_0", "jpg_1"]).to_pylist()
    per_unit = []  # the bare inputs: each unit's batches, decoded beforehand, exactly as the stage batches them
    for u in units:
        batches = []
        for i in range(u["start"], u["stop"], args.batch_size):
            rows = table[i : min(i + args.batch_size, u["stop"])]
            images = [decode_image(r["jpg_0"]) for r in rows] + [decode_image(r["jpg_1"]) for r in rows]
            batches.append((images, [r["caption"] for r in rows] * 2))
        per_unit.append(batches)
    for m in loaded:  # warm-up, both sides
        m.score(*per_unit[0][0])
    stage.process([units[0]])
    # interleaved unit by unit, alternating which goes first, so both see the same machine load
    bare = in_process = 0.0
    rows = 0
    for k, (u, batches) in enumerate(zip(units, per_unit)):
        for turn in ((0, 1) if k % 2 == 0 else (1, 0)):
            t0 = time.perf_counter()
            if turn == 0:
                for images, prompts in batches:
                    for m in loaded:
                        m.score(images, prompts)
                bare += time.perf_counter() - t0
            else:
                rows += stage.process([u]).num_rows
                in_process += time.perf_counter() - t0
    assert rows == args.pairs
    del loaded, per_unit, table, stage

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    clock = Clock()
    t0 = time.perf_counter()
    result = run_audit(data, work / "out", cfg, reporter=clock)
    wall = time.perf_counter() - t0
    ray.shutdown()

    n = args.pairs
    assert result.summary["pairs_scored"] == n, f"audit scored {result.summary['pairs_scored']} of {n} pairs"
    m = clock.marks
    score = m["score_end"] - m["score_start"]
    first = m["score_first"] - m["score_start"]
    bare_pps = n / bare
    print(f"pairs: {n} ({args.size}px JPEG/PNG, batch {args.batch_size} pairs = {2 * args.batch_size} images per call), "
          f"units: {len(units)}, models: {len(paths)}")
    print(f"bare forward calls:      {bare:8.2f} s  ({bare_pps:.2f} pairs/s)")
    print(f"stage, in process:       {in_process:8.2f} s  ({n / in_process:.2f} pairs/s)  after a {load:.2f} s model load")
    print(f"audit on Ray, end to end:{wall:8.2f} s  ({n / wall:.2f} pairs/s)  score phase {score:.2f} s "
          f"(first block after {first:.2f} s), analysis/export/report {wall - score:.2f} s")
    print(f"ratio steady state (stage pairs/s / bare pairs/s):      {n / in_process / bare_pps:.3f}")
    print(f"ratio score phase on Ray (with actor start + load):     {n / score / bare_pps:.3f}")
    print(f"ratio end to end (with analysis, exports, report.html): {n / wall / bare_pps:.3f}")

if __name__ == "__main__":
    main()
