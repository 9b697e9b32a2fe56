"""Orchestration overhead of the generate stage.

Runs the same units twice, side by side in one process:
  1. bare: the diffusers pipeline loaded once, `run_pipeline` called unit after unit (the forward calls);
  2. stage: the real generate stage on Ray (actor pool, units, media encoding, atomic writes, parquet parts).
Prints stage wall time / bare forward time. Goal: <= 1.15 on 2 cores.

    python benchmarks/generate_overhead.py --images 64 --size 128 --steps 8
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import ray
import torch

from pipeline import models
from pipeline.generate import GenerateStage, plan_candidates
from pipeline.generators import load_pipeline, resolve_generator, run_pipeline
from pipeline.prompts import library_prompts
from pipeline.stage import make_units, run_stage
from pipeline.store import PartStore
from schemas.config import parse_config
from schemas.tables import CANDIDATES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64, help="candidates to generate")
    ap.add_argument("--size", type=int, default=128, help="image side (px) of the tiny SD1.5")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="vipo-bench-"))
    n_prompts = max(1, args.images // 2)
    cfg = parse_config({
        "output_dir": str(work / "build"),
        "categories": {"composition": {"quota": 1, "prompts": n_prompts}},
        "generators": [{
            "name": "tiny-sd15", "seeds_per_prompt": 2,
            "call_kwargs": {"height": args.size, "width": args.size, "num_inference_steps": args.steps},
            "resources": {"num_cpus": 1, "num_actors": 1, "batch_size": args.batch_size},
        }],
        "scoring": {"reward_models": [{"name": "clipscore"}]},
    })
    spec = resolve_generator(cfg.generators[0])
    path = models.generator_path(spec, models.default_cache_dir())
    tasks = plan_candidates(library_prompts({"composition": n_prompts}, cfg.seed), cfg, {spec.name: spec})
    units = make_units(tasks, args.batch_size, key=lambda t: t["params"])

    torch.set_num_threads(1)  # the actor gets num_cpus=1 -> one torch thread; compare like with like
    pipe = load_pipeline(spec, path)
    run_pipeline(pipe, spec, [units[0][0]["prompt"]], [0], json.loads(units[0][0]["params"]))  # warm-up
    t0 = time.perf_counter()
    for unit in units:
        run_pipeline(pipe, spec, [t["prompt"] for t in unit], [t["seed"] for t in unit], json.loads(unit[0]["params"]))
    bare = time.perf_counter() - t0
    del pipe

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    from pipeline.ray_runtime import init_ray

    init_ray(cfg.ray)
    stage = GenerateStage(resources=cfg.generators[0].resources, spec=spec, model_path=path, media_root=str(work / "build" / "media"), media=cfg.media)
    store = PartStore(work / "build" / "candidates", CANDIDATES, "candidate_id")
    t0 = time.perf_counter()
    first = None
    for table in run_stage(stage, units):
        first = first or time.perf_counter() - t0
        store.append(table)
    wall = time.perf_counter() - t0
    ray.shutdown()
    n = sum(len(u) for u in units)
    print(f"candidates: {n} ({args.size}px, {args.steps} steps, batch {args.batch_size}), units: {len(units)}")
    print(f"bare forward calls:   {bare:8.2f} s  ({n / bare:.2f} img/s)")
    print(f"generate stage wall:  {wall:8.2f} s  ({n / wall:.2f} img/s), first unit after {first:.2f} s (actor start + load)")
    print(f"overhead ratio (stage wall / bare forward): {wall / bare:.3f}   goal <= 1.15")
    print(f"steady-state ratio (excluding actor start):  {(wall - first) / (bare * (len(units) - 1) / len(units)):.3f}")


if __name__ == "__main__":
    main()
