"""Orchestration overhead of the generate stage.

Writes the prompts table once (`Build(cfg).run(["prompts"])`, no Ray), plans the generate stage's
units (`GenerateStage.plan()`), then runs the same units twice, side by side in one process:
  1. bare: the diffusers pipeline loaded once, `run_pipeline` called batch after batch on each unit's
     tasks (`pipeline.generate.expand`, made beforehand): the forward calls only;
  2. stage: the real generate stage on Ray, `Executor(use_ray=True).run(stage)` (actor pool, unit
     descriptors, prompt slices read on the actor, media encoding, atomic writes, the candidates table
     and its compaction).
A unit is `batch_size * batches_per_unit` candidates, as in the build. Prints stage wall time / bare
forward time. Goal: <= 1.15 on 2 cores. The steady-state ratio leaves out the first unit (actor
start + model load) on the stage side (nan with one unit).

    python benchmarks/generate_overhead.py --images 64 --size 128 --steps 8
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import ray
import torch

from benchmarks.reporters import FirstUnit
from pipeline.build import Build
from pipeline.catalogue import read_slices
from pipeline.executor import Executor
from pipeline.generate import GenerateStage, expand
from pipeline.generators import load_pipeline, run_pipeline
from pipeline.ray_runtime import init_ray
from schemas.config import ResourceConfig, parse_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64, help="candidates to generate")
    ap.add_argument("--size", type=int, default=128, help="image side (px) of the tiny SD1.5")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--batches-per-unit", type=int, default=ResourceConfig().batches_per_unit,
                    help="model calls per unit (the build's default)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="vipo-bench-"))
    n_prompts = max(1, args.images // 2)
    cfg = parse_config({
        "output_dir": str(work / "build"),
        "categories": {"composition": {"quota": 1, "prompts": n_prompts}},
        "generators": [{
            "name": "tiny-sd15", "seeds_per_prompt": 2,
            "call_kwargs": {"height": args.size, "width": args.size, "num_inference_steps": args.steps},
            "resources": {"num_cpus": 1, "num_actors": 1, "batch_size": args.batch_size,
                          "batches_per_unit": args.batches_per_unit},
        }],
        "scoring": {"reward_models": [{"name": "clipscore"}]},
        "ray": {"num_cpus": 2, "columnar": "local"},  # the prompts step runs here; Ray starts after the bare run
    })
    build = Build(cfg)
    build.run(["prompts"])  # the prompts table (and build.specs, the resolved generators)
    g = cfg.generators[0]
    spec = build.specs[g.name]
    path = build.generator_path(spec)
    stage = GenerateStage(
        resources=g.resources, spec=spec, gcfg=g, model_path=path, media_root=build.media_root, media=cfg.media,
        prompts=build.table("prompts"), candidates=build.table("candidates"), categories=tuple(cfg.categories),
    )
    units = stage.plan()
    unit_tasks = [expand(read_slices(u.slices, ["prompt_id", "category", "modality", "prompt"]), g.name, u.key,
                         g.seeds_per_prompt) for u in units]
    bs = args.batch_size

    torch.set_num_threads(1)  # the actor gets num_cpus=1 -> one torch thread; compare like with like
    pipe = load_pipeline(spec, path)
    first_task = unit_tasks[0][0]
    run_pipeline(pipe, spec, [first_task["prompt"]], [0], json.loads(first_task["params"]))  # warm-up
    t0 = time.perf_counter()
    for tasks in unit_tasks:
        for i in range(0, len(tasks), bs):
            batch = tasks[i : i + bs]
            run_pipeline(pipe, spec, [t["prompt"] for t in batch], [t["seed"] for t in batch], json.loads(batch[0]["params"]))
    bare = time.perf_counter() - t0
    del pipe

    # a fresh local instance of 2 CPUs (address="local"): never another job's Ray found on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    init_ray(cfg.ray)  # the build's Ray Data settings on it

    reporter = FirstUnit()
    t0 = time.perf_counter()
    summary = Executor(reporter, use_ray=True).run(stage)
    wall = time.perf_counter() - t0
    ray.shutdown()
    first = reporter.first if reporter.first is not None else wall
    n = sum(len(t) for t in unit_tasks)
    rows = build.table("candidates").num_rows()
    assert rows == n and summary.n_out == n, f"stage wrote {rows} rows ({summary.n_out} ok) for {n} candidates"
    print(f"candidates: {n} ({args.size}px, {args.steps} steps, batch {bs}), units: {len(units)} "
          f"({bs * args.batches_per_unit} candidates each)")
    print(f"bare forward calls:   {bare:8.2f} s  ({n / bare:.2f} img/s)")
    print(f"generate stage wall:  {wall:8.2f} s  ({n / wall:.2f} img/s), first unit after {first:.2f} s (actor start + load)")
    print(f"overhead ratio (stage wall / bare forward): {wall / bare:.3f}   goal <= 1.15")
    rest = sum(len(t) for t in unit_tasks[1:]) / n  # the bare share of the units after the first
    steady = (wall - first) / (bare * rest) if rest else float("nan")
    print(f"steady-state ratio (excluding actor start):  {steady:.3f}")


if __name__ == "__main__":
    main()
