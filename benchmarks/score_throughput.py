"""Throughput of the score stage against the bare reward-model forwards.

Runs the same batches twice, side by side in one process:
  1. bare: the five tiny reward models loaded once, one torch thread, and only their
     `score(images, prompts)` calls timed, batch by batch, on images decoded beforehand;
  2. stage: the real score stage on Ray (one actor, num_cpus=1: units, media reads, JPEG decoding,
     all five models, arrow output), wall time from start to the last block.
Inputs are N deterministic synthetic JPEGs (gradients + seeded noise) in a temp media folder.
Prints stage images/s / bare images/s. Goal: >= 0.9 on 2 cores. The steady-state ratio leaves out
the first unit (actor start + model load) on the stage side.

    python benchmarks/score_throughput.py --images 256 --size 256 --batch-size 8
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import torch
import transformers

from pipeline import models
from pipeline.media import MediaStore, decode_image, encode_image
from pipeline.score import ScoreStage
from pipeline.stage import make_units, run_stage
from reward_models.registry import reward_model_class
from schemas.config import RayConfig, ResourceConfig
from schemas.tables import REWARD_MODEL_NAMES


def synthetic_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random-direction colour gradient plus noise, uint8 (size, size, 3)."""
    y, x = np.mgrid[0:size, 0:size] / max(1, size - 1)
    a, b, c = rng.uniform(-1, 1, (3, 3))
    base = (a * x[..., None] + b * y[..., None] + c + 1) * 0.5 * 255
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=256, help="candidate images to score")
    ap.add_argument("--size", type=int, default=256, help="image side (px)")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="vipo-bench-"))
    media = MediaStore(work / "media")
    rng = np.random.default_rng(0)
    tasks = []
    for i in range(args.images):
        key = f"image/{i % 100:02d}/c{i:06d}.jpg"
        media.write(key, encode_image(synthetic_image(rng, args.size)))
        tasks.append({"id": f"c{i:06d}", "prompt_id": f"p{i // 2:06d}", "category": "aesthetics", "modality": "image",
                      "prompt": f"a colourful gradient, study number {i // 2}", "media_path": key})
    units = make_units(tasks, args.batch_size, key=lambda t: t["modality"])

    cache = models.default_cache_dir()
    paths = {name: models.reward_model_path(name, "tiny", cache) for name in REWARD_MODEL_NAMES}

    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(1)  # the actor gets num_cpus=1 -> one torch thread; compare like with like
    loaded = [reward_model_class(name).from_pretrained(path) for name, path in paths.items()]
    batches = [([decode_image(media.read(t["media_path"])) for t in u], [t["prompt"] for t in u]) for u in units]
    for m in loaded:  # warm-up
        m.score(*batches[0])
    t0 = time.perf_counter()
    for images, prompts in batches:
        for m in loaded:
            m.score(images, prompts)
    bare = time.perf_counter() - t0
    del loaded, batches

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    from pipeline.ray_runtime import init_ray

    init_ray(RayConfig())
    stage = ScoreStage(resources=ResourceConfig(num_cpus=1, num_actors=1, batch_size=args.batch_size),
                       models=[(name, path, "float32", {}) for name, path in paths.items()],
                       media_root=media.root, video_frames=4)
    t0 = time.perf_counter()
    first, rows = None, 0
    for table in run_stage(stage, units):
        first = first or time.perf_counter() - t0
        rows += table.num_rows
    wall = time.perf_counter() - t0
    ray.shutdown()

    n = len(tasks)
    assert rows == n, f"stage returned {rows} rows for {n} candidates"
    bare_ips, stage_ips = n / bare, n / wall
    steady_ips = (n - len(units[0])) / (wall - first) if len(units) > 1 else float("nan")
    print(f"images: {n} ({args.size}px JPEG, batch {args.batch_size}), units: {len(units)}, models: {len(paths)}")
    print(f"bare forward calls:  {bare:8.2f} s  ({bare_ips:.2f} img/s)")
    print(f"score stage wall:    {wall:8.2f} s  ({stage_ips:.2f} img/s), first unit after {first:.2f} s (actor start + load)")
    print(f"throughput ratio (stage img/s / bare img/s): {stage_ips / bare_ips:.3f}   goal >= 0.9")
    print(f"steady-state ratio (excluding the first unit): {steady_ips / bare_ips:.3f}")


if __name__ == "__main__":
    main()
