"""Throughput of the score stage against the bare reward-model forwards.

Inputs are N deterministic synthetic JPEGs (gradients + seeded noise) in a temp media folder, with a
prompts table and a candidates table written in the build's catalogue (`Build(cfg).table(...)`), in
units of `batch_size * batches_per_unit` candidates like the generate stage's. The score stage's
units are planned from them (`ScoreStage.plan()`), then the same batches run twice, side by side in
one process:
  1. bare: the five tiny reward models loaded once, one torch thread, and only their
     `score(images, prompts)` calls timed, batch by batch, on images decoded beforehand;
  2. stage: the real score stage on Ray, `Executor(use_ray=True).run(stage)` (one actor, num_cpus=1:
     unit descriptors, candidate slices and prompts read on the actor, media reads, JPEG decoding,
     all five models, the raw scores table and its compaction), wall time from start to the end.
Prints stage images/s / bare images/s. Goal: >= 0.9 on 2 cores. The steady-state ratio leaves out
the first unit (actor start + model load) on the stage side (nan with one unit).

    python benchmarks/score_throughput.py --images 256 --size 256 --batch-size 8
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pyarrow as pa
import ray
import torch
import transformers

from benchmarks.reporters import FirstUnit
from benchmarks.synthetic import synthetic_pixels
from pipeline import models
from pipeline.build import Build
from pipeline.catalogue import read_slices
from pipeline.executor import Executor
from pipeline.media import MediaStore, decode_image, encode_image
from pipeline.ray_runtime import init_ray
from pipeline.score import ScoreStage, score_names
from reward_models.registry import reward_model_class
from schemas.config import RayConfig, ResourceConfig, parse_config
from schemas.tables import CANDIDATES, PROMPTS, REWARD_MODEL_NAMES, raw_scores_schema
from schemas.units import UnitStats

CATEGORY = "aesthetics"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=256, help="candidate images to score")
    ap.add_argument("--size", type=int, default=256, help="image side (px)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batches-per-unit", type=int, default=ResourceConfig().batches_per_unit,
                    help="model calls per unit (the build's default)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="vipo-bench-"))
    cache = models.default_cache_dir()
    paths = {name: models.reward_model_path(name, "tiny", cache) for name in REWARD_MODEL_NAMES}
    cfg = parse_config({
        "output_dir": str(work / "build"),
        "categories": {CATEGORY: {"quota": 1, "prompts": 1}},
        "generators": [{"name": "tiny-sd15"}],
        "scoring": {"reward_models": [{"name": n} for n in REWARD_MODEL_NAMES]},
    })
    build = Build(cfg)
    media = MediaStore(build.media_root)
    tasks = []
    for i in range(args.images):
        key = f"image/{i % 100:02d}/c{i:06d}.jpg"
        media.write(key, encode_image(synthetic_pixels(i, args.size, args.size)))
        tasks.append({"id": f"c{i:06d}", "prompt_id": f"p{i // 2:06d}", "category": CATEGORY, "modality": "image",
                      "prompt": f"a colourful gradient, study number {i // 2}", "media_path": key})

    # the generate stage's tables, as it leaves them: prompts, then candidates in units of a model unit
    prompt_rows = [{"prompt_id": t["prompt_id"], "category": CATEGORY, "modality": "image", "prompt": t["prompt"],
                    "source": "bench"} for t in tasks[::2]]
    build.table("prompts").write_unit("bench", pa.Table.from_pylist(prompt_rows, schema=PROMPTS), UnitStats())
    per_unit = args.batch_size * args.batches_per_unit
    candidates = build.table("candidates")
    for u, start in enumerate(range(0, len(tasks), per_unit)):
        rows = [{"candidate_id": t["id"], "prompt_id": t["prompt_id"], "category": CATEGORY, "modality": "image",
                 "generator": "bench", "seed": i, "params": "{}", "media_path": t["media_path"], "width": args.size,
                 "height": args.size, "num_frames": 1, "status": "ok"}
                for i, t in enumerate(tasks[start : start + per_unit], start)]
        candidates.write_unit(f"u{u:06d}", pa.Table.from_pylist(rows, schema=CANDIDATES), UnitStats(n_in=len(rows), n_out=len(rows)))
    for t in (build.table("prompts"), candidates):
        t.compact()

    names = list(paths)
    raw = build.catalogue.table("scores_raw/group-0", raw_scores_schema(score_names(names)), cluster_by="category")
    stage = ScoreStage(resources=ResourceConfig(num_cpus=1, num_actors=1, batch_size=args.batch_size,
                                                batches_per_unit=args.batches_per_unit),
                       models=[(name, path, "float32", {}) for name, path in paths.items()],
                       media_root=build.media_root, video_frames=4, video_metrics=True,
                       candidates=candidates, prompts=build.table("prompts"), raw=raw)
    units = stage.plan()
    by_id = {t["id"]: t for t in tasks}
    unit_tasks = [[by_id[c] for c in sorted(read_slices(u.slices, ["candidate_id"])["candidate_id"].to_pylist())] for u in units]
    bs = args.batch_size
    n = sum(len(u) for u in unit_tasks)
    assert n == len(tasks), f"the score stage plans {n} candidates of {len(tasks)}"

    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(1)  # the actor gets num_cpus=1 -> one torch thread; compare like with like
    loaded = [reward_model_class(name).from_pretrained(path) for name, path in paths.items()]
    batches = [([decode_image(media.read(t["media_path"])) for t in u[i : i + bs]], [t["prompt"] for t in u[i : i + bs]])
               for u in unit_tasks for i in range(0, len(u), bs)]
    for m in loaded:  # warm-up
        m.score(*batches[0])
    t0 = time.perf_counter()
    for images, prompts in batches:
        for m in loaded:
            m.score(images, prompts)
    bare = time.perf_counter() - t0
    del loaded, batches

    # a fresh local instance of 2 CPUs (address="local"): never another job's Ray found on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    init_ray(RayConfig())  # the build's Ray Data settings on it

    reporter = FirstUnit()
    t0 = time.perf_counter()
    summary = Executor(reporter, use_ray=True).run(stage)
    wall = time.perf_counter() - t0
    ray.shutdown()
    first = reporter.first if reporter.first is not None else wall

    rows = raw.num_rows()
    assert rows == n and summary.n_out == n, f"stage wrote {rows} rows ({summary.n_out} scored) for {n} candidates"
    bare_ips, stage_ips = n / bare, n / wall
    steady_ips = (n - len(unit_tasks[0])) / (wall - first) if len(units) > 1 else float("nan")
    print(f"images: {n} ({args.size}px JPEG, batch {bs}), units: {len(units)} ({per_unit} candidates each), "
          f"models: {len(paths)}")
    print(f"bare forward calls:  {bare:8.2f} s  ({bare_ips:.2f} img/s)")
    print(f"score stage wall:    {wall:8.2f} s  ({stage_ips:.2f} img/s), first unit after {first:.2f} s (actor start + load)")
    print(f"throughput ratio (stage img/s / bare img/s): {stage_ips / bare_ips:.3f}   goal >= 0.9")
    print(f"steady-state ratio (excluding the first unit): {steady_ips / bare_ips:.3f}")


if __name__ == "__main__":
    main()
