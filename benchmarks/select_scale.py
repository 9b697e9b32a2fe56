"""Selection at scale, and shard-writing throughput.

1. Seconds from scored candidates to selected pairs (`attach_phash` + `form_pairs` + `select_pairs`)
   on synthetic rows shaped like a real build: 8 categories, prompt groups of 6-10 candidates (mean 8),
   3 generators (one better than the others, so the generator cap has work), 5 correlated reward models,
   the paper's rule (all five agree, min margin 0.1), 3% near-duplicate candidates. Each size runs in its
   own process so its peak RSS is its own. Prints both times and their ratio (linear growth: ~10), CPU
   time beside wall time: on a shared machine the wall clock also measures the neighbours.
2. The write stage (`pipeline.write.ShardStage`, run by `Executor(use_ray=False)` on a selected table:
   shard planning, reproducible tars, sidecars, the shard index table, the manifest) against plain
   `tarfile` writing the same members to the same number of tars, on small jpgs. The winner / loser
   records are made beforehand (the select stage attaches them). Prints MB/s of both and the ratio.

    python benchmarks/select_scale.py                       # 1M and 10M rows, 2,000 pairs of shards
    python benchmarks/select_scale.py --rows 100000 1000000 --pairs 500
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.pair import attach_phash, form_pairs
from pipeline.select import select_pairs
from schemas.categories import CATEGORIES, modality_of
from schemas.config import parse_config
from schemas.tables import REWARD_MODEL_NAMES, scores_schema

GENERATORS = ("gen-a", "gen-b", "gen-c")
_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)


def _hex(words: np.ndarray) -> pa.Array:
    """(n, k) uint64 -> n strings of 16k hex digits, built from one buffer."""
    n = len(words)
    b = words.astype(">u8").view(np.uint8).reshape(n, -1)
    out = np.empty((n, b.shape[1] * 2), np.uint8)
    out[:, 0::2], out[:, 1::2] = _HEX[b >> 4], _HEX[b & 15]
    width = out.shape[1]
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int64)
    return pa.Array.from_buffers(pa.large_string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(out.tobytes())]).cast(pa.string())


def synthetic(n_rows: int, seed: int = 0) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(scores with group stats, candidates with generator and phash, prompts) of about n_rows candidates."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(6, 11, size=n_rows // 8 + 2)
    sizes = sizes[: np.searchsorted(np.cumsum(sizes), n_rows) + 1]
    sizes[-1] -= sizes.sum() - n_rows
    n_groups = len(sizes)
    group = np.repeat(np.arange(n_groups), sizes)
    cats = np.array(list(CATEGORIES))
    gcat = rng.integers(0, len(cats), n_groups)
    cat = cats[gcat][group]
    modality = np.array([modality_of(c) for c in cats])[gcat][group]
    gen = rng.integers(0, len(GENERATORS), n_rows)
    quality = rng.normal(size=n_rows) + np.array([0.8, 0.0, -0.3])[gen]  # gen-a wins most pairs
    scores = {s: (quality + rng.normal(scale=1.0, size=n_rows)).astype(np.float32) for s in REWARD_MODEL_NAMES}
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    prompt_ids = _hex(rng.integers(0, 2**63, n_groups, dtype=np.uint64)[:, None])
    cols = {
        "candidate_id": _hex(rng.integers(0, 2**63, n_rows, dtype=np.uint64)[:, None]),
        "prompt_id": prompt_ids.take(pa.array(group)),
        "category": pa.array(cat),
        "modality": pa.array(modality),
    }
    for s, v in scores.items():
        mean = (np.add.reduceat(v.astype(np.float64), starts) / sizes)[group]
        std = np.sqrt(np.add.reduceat((v - mean) ** 2, starts) / sizes)[group]
        cols[s], cols[f"{s}_group_mean"], cols[f"{s}_group_std"] = v, mean.astype(np.float32), std.astype(np.float32)
        cols[f"{s}_advantage"] = ((v - mean) / np.where(std > 0, std, 1)).astype(np.float32)
    table = pa.table({f.name: cols.get(f.name, pa.nulls(n_rows, f.type)) for f in scores_schema(list(REWARD_MODEL_NAMES))})
    table = table.cast(scores_schema(list(REWARD_MODEL_NAMES)))
    words = rng.integers(0, 2**63, (n_rows, 4), dtype=np.uint64)
    dup = np.flatnonzero(rng.random(n_rows) < 0.03)
    dup = dup[(dup > 0) & (group[dup] == group[np.maximum(dup - 1, 0)])]
    words[dup] = words[dup - 1] ^ np.uint64(1)  # a one-bit-off copy of its neighbour in the group
    video = modality == "video"
    phash = pa.concat_arrays([_hex(words[~video, :1]), _hex(words[video])]).take(
        pa.array(np.argsort(np.r_[np.flatnonzero(~video), np.flatnonzero(video)], kind="stable"))
    )
    candidates = pa.table({"candidate_id": table["candidate_id"], "generator": pa.array(np.array(GENERATORS)[gen]),
                           "category": table["category"], "phash": phash})
    prompts = pa.table({"prompt_id": prompt_ids, "prompt": pa.array(["a prompt"] * n_groups)})
    return table, candidates, prompts


def config(n_rows: int):
    quota = max(1, n_rows // 8 // 8)  # a pair per ~8 candidates of each category: reachable, not trivially
    return parse_config({
        "categories": {c: {"quota": quota, "prompts": 1} for c in CATEGORIES},
        "generators": [{"name": "tiny-sd15"}],
        "scoring": {"reward_models": [{"name": n} for n in REWARD_MODEL_NAMES]},
        "pairing": {"quorum": 5, "min_margin": 0.1, "max_margin": 3.0, "near_duplicate_bits": 4, "max_pairs_per_prompt": 4},
        "selection": {"max_winner_generator_share": 0.5},
    })


def run_select(n_rows: int) -> dict:
    """One size, in this process: build the synthetic set, then time selection end to end."""
    scores, candidates, prompts = synthetic(n_rows)
    cfg = config(n_rows)
    p = cfg.pairing
    c0 = time.process_time()
    t0 = time.perf_counter()
    joined = attach_phash(scores, candidates)
    t_join = time.perf_counter()
    del scores  # the build reads scores, joins, and lets go of the unjoined table too
    candidates = candidates.select(["candidate_id", "generator", "category"])
    pairs = form_pairs(joined, cfg.scorer_names, cfg.quorum, p.min_margin, max_margin=p.max_margin,
                       near_duplicate_bits=p.near_duplicate_bits)
    t_pairs = time.perf_counter()
    del joined
    sel = select_pairs(pairs, prompts, cfg, candidates=candidates)
    t1 = time.perf_counter()
    cpu = time.process_time() - c0
    shares = [max(r["winner_generators"].values(), default=0) / max(r["selected"], 1) for r in sel.report.values()]
    return {
        "rows": n_rows, "seconds": t1 - t0, "cpu_s": cpu, "load": os.getloadavg()[0], "join_s": t_join - t0, "pairs_s": t_pairs - t_join, "select_s": t1 - t_pairs,
        "pairs": pairs.num_rows, "kept": int(pairs["kept"].to_numpy(zero_copy_only=False).sum()),
        "selected": sel.selected.num_rows, "quota_total": sum(q.quota for q in cfg.categories.values()),
        "max_generator_share": max(shares),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def run_shards(n_pairs: int, per_shard: int = 200) -> dict:
    """The write stage (`ShardStage` run by `Executor(use_ray=False)` on a selected table) vs plain
    tarfile: same members, same shard count. The winner / loser records are made beforehand (the select
    stage attaches them in the build), so both sides only read media and write tars."""
    from pipeline.catalogue import Catalogue
    from pipeline.executor import Executor
    from pipeline.media import encode_image
    from pipeline.records import record_table
    from pipeline.write import ShardStage
    from schemas.tables import SHARD_INDEX, pairs_schema, selected_schema
    from schemas.units import UnitStats

    work = Path(tempfile.mkdtemp(prefix="vipo-shards-"))
    media = work / "media"
    (media / "image").mkdir(parents=True)
    rng = np.random.default_rng(0)
    scorers = list(REWARD_MODEL_NAMES)
    ids = [f"{i:016x}" for i in range(2 * n_pairs)]
    yy, xx = np.mgrid[:96, :96]
    for i, cid in enumerate(ids):
        base = (np.sin(xx / (5 + i % 7)) + np.cos(yy / (3 + i % 5))) * 60 + 128
        img = np.clip(base[..., None] + rng.normal(0, 8, (96, 96, 3)), 0, 255).astype(np.uint8)
        (media / "image" / f"{cid}.jpg").write_bytes(encode_image(img, "jpg", 90))
    cands = pa.table({
        "candidate_id": ids, "prompt_id": [f"p{i // 2}" for i in range(2 * n_pairs)], "category": ["aesthetics"] * len(ids),
        "modality": ["image"] * len(ids), "generator": [GENERATORS[i % 3] for i in range(len(ids))],
        "seed": list(range(len(ids))), "params": ["{}"] * len(ids), "media_path": [f"image/{c}.jpg" for c in ids],
        "width": [96] * len(ids), "height": [96] * len(ids), "num_frames": [1] * len(ids),
        "fps": pa.nulls(len(ids), pa.float32()),
    })
    sc = {"candidate_id": ids, "prompt_id": cands["prompt_id"], "category": cands["category"], "modality": cands["modality"]}
    for s in scorers:
        v = rng.normal(size=len(ids)).astype(np.float32)
        sc.update({s: v, f"{s}_group_mean": v * 0, f"{s}_group_std": v * 0 + 1, f"{s}_advantage": v})
    sc["combined_advantage"] = np.mean([sc[f"{s}_advantage"] for s in scorers], axis=0)
    sc["reason"] = pa.nulls(len(ids), pa.string())
    scores = pa.table(sc).cast(scores_schema(scorers))
    records = record_table(cands, scores, scorers, pa.array(ids, pa.string()))
    record = dict(zip(records["candidate_id"].to_pylist(), records["record"].to_pylist()))
    rows = [dict(pair_id=f"{i:016x}", prompt_id=f"p{i}", category="aesthetics", modality="image", winner_id=ids[2 * i],
                 loser_id=ids[2 * i + 1], **{f"margin_{s}": 1.0 for s in scorers}, agree=5, n_scorers=5, kept=True,
                 drop_reason=None, prompt="a prompt", p_vlm=None, split="train", sort_key=float(i), winner_position=i % 2,
                 winner_record=record[ids[2 * i]], loser_record=record[ids[2 * i + 1]])
            for i in range(n_pairs)]
    assert set(pairs_schema(scorers).names) <= set(rows[0])
    selected = pa.Table.from_pylist(rows, schema=selected_schema(scorers))

    def shard_stage(folder: Path, table: pa.Table) -> ShardStage:
        cat = Catalogue(folder)
        sel = cat.table("selected", selected_schema(scorers), cluster_by="category")
        sel.write_unit("bench", table, UnitStats(n_in=table.num_rows, n_out=table.num_rows))
        sel.compact()
        return ShardStage(selected=sel, shard_index=cat.table("shard_index", SHARD_INDEX, cluster_by="modality"),
                          out_dir=str(folder), media_root=str(media), scorers=tuple(scorers), image_format="jpg",
                          samples_per_shard=per_shard, dataset_name="bench", split="train", engine="local")

    executor = Executor(use_ray=False)
    executor.run(shard_stage(work / "warm", selected.slice(0, per_shard)))  # warm the imports and the media pages
    stage = shard_stage(work / "wds", selected)
    t0 = time.perf_counter()
    summary = executor.run(stage)
    t_wds = time.perf_counter() - t0
    manifests = stage.manifests
    assert summary.n_out == n_pairs, f"the write stage wrote {summary.n_out} samples of {n_pairs}"
    nbytes = sum(s["bytes"] for s in manifests["image"]["shards"])

    # plain tarfile: the same members (json text of the same size order, txt, two jpgs) per sample
    t0 = time.perf_counter()
    plain = work / "plain"
    plain.mkdir()
    for index, start in enumerate(range(0, n_pairs, per_shard)):
        with tarfile.open(plain / f"train-{index:06d}.tar", "w") as tar:
            for r in rows[start : start + per_shard]:
                meta = json.dumps(r, default=str).encode()
                members = {
                    "json": meta, "txt": r["prompt"].encode(),
                    "win.jpg": (media / "image" / f"{r['winner_id']}.jpg").read_bytes(),
                    "lose.jpg": (media / "image" / f"{r['loser_id']}.jpg").read_bytes(),
                }
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{r['pair_id']}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    t_tar = time.perf_counter() - t0
    plain_bytes = sum(p.stat().st_size for p in plain.glob("*.tar"))
    return {"pairs": n_pairs, "write_s": t_wds, "tarfile_s": t_tar, "shard_bytes": nbytes, "tar_bytes": plain_bytes,
            "shards": len(manifests["image"]["shards"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs=2, default=[1_000_000, 10_000_000], help="two candidate-row counts")
    ap.add_argument("--pairs", type=int, default=2000, help="pairs written in the shard part (0 skips it)")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(run_select(args.worker)))
        return
    results = []
    for n in args.rows:
        out = subprocess.run([sys.executable, __file__, "--worker", str(n)], check=True, capture_output=True, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"select {r['rows']:>11,} rows: {r['seconds']:7.2f} s wall, {r['cpu_s']:7.2f} s CPU, load {r['load']:.1f} "
              f"(join {r['join_s']:.2f}, pairs {r['pairs_s']:.2f}, "
              f"select {r['select_s']:.2f}); {r['pairs']:,} pairs, {r['kept']:,} consistent, {r['selected']:,}/"
              f"{r['quota_total']:,} selected, top generator share {r['max_generator_share']:.3f}, "
              f"peak RSS {r['peak_rss_gib']:.2f} GiB", flush=True)
    a, b = results
    print(f"ratio {b['rows'] // a['rows']}x rows -> {b['seconds'] / a['seconds']:.2f}x wall time, "
          f"{b['cpu_s'] / a['cpu_s']:.2f}x CPU time "
          f"({b['rows'] / b['seconds'] / 1e6:.2f} M rows/s at {b['rows']:,})")
    if args.pairs:
        s = run_shards(args.pairs)
        mb = s["shard_bytes"] / 2**20
        print(f"shards {s['pairs']:,} pairs in {s['shards']} shards ({mb:.1f} MiB): write stage {s['write_s']:.2f} s "
              f"({mb / s['write_s']:.1f} MiB/s), plain tarfile {s['tarfile_s']:.2f} s "
              f"({s['tar_bytes'] / 2**20 / s['tarfile_s']:.1f} MiB/s); ratio write stage/tarfile time "
              f"{s['write_s'] / s['tarfile_s']:.2f}")


if __name__ == "__main__":
    main()
