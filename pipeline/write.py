"""The write stage: selected pairs -> WebDataset tar shards, a sidecar parquet per shard and the folder's
manifest.

Each shard is one Ray task that builds its samples, streams the tar into a temp file and renames it into
place (then its sidecar the same way). The driver stays columnar: it looks up the winner and loser rows
of the selected pairs with Arrow kernels, hands each task only its own rows (copied, so a task's
arguments are its slice and not the whole table), and keeps a bounded number of tasks in flight, so a
build of millions of pairs never holds every shard's samples at once.

Tars are reproducible: fixed member order, owner, mode and mtime, and media bytes copied from `media/`
without re-encoding.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import ray

from pipeline.store import write_atomic, write_bytes, write_table
from schemas.ids import canonical_json
from schemas.shard import (
    DATASET_VERSION,
    MANIFEST_NAME,
    TAR_MODE,
    TAR_MTIME,
    TAR_OWNER,
    media_extension,
    member_names,
    shard_name,
    sidecar_name,
)

_RECORD_COLS = ("candidate_id", "generator", "seed", "params", "width", "height", "num_frames", "fps", "media_path")
_ADVANTAGE_SUFFIX = "_advantage"  # scores_schema's per-scorer advantage columns: f"{scorer}_advantage"
_SCORE, _ADV = "score:", "advantage:"  # prefixes of the flat record columns handed to the shard tasks


def _num(x: Any) -> Any:
    """JSON-safe scalar: NaN -> None."""
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


def advantage_columns(schema: pa.Schema, score_cols: list[str]) -> dict[str, str]:
    """Shard-json advantage name -> scores column: one per score column, then every other
    `*_advantage` column the scores schema carries (e.g. `combined_advantage` -> "combined")."""
    out = {c: f"{c}{_ADVANTAGE_SUFFIX}" for c in score_cols}
    taken = set(out.values())
    for name in schema.names:
        if name.endswith(_ADVANTAGE_SUFFIX) and name not in taken:
            out[name.removesuffix(_ADVANTAGE_SUFFIX)] = name
    return out


def _records(candidates: pa.Table, scores: pa.Table, score_cols: list[str], needed: pa.Array) -> pa.Table:
    """One flat row per candidate in `needed`: its record fields, `score:<c>` and `advantage:<name>`
    columns (null where the candidate has no scores row). Columnar: no Python loop over rows."""
    cand = candidates.filter(pc.is_in(candidates["candidate_id"], value_set=needed)).select(list(_RECORD_COLS))
    where = pc.index_in(cand["candidate_id"], value_set=scores["candidate_id"])
    columns = {**{f"{_SCORE}{c}": c for c in score_cols},
               **{f"{_ADV}{k}": col for k, col in advantage_columns(scores.schema, score_cols).items()}}
    picked = scores.select(list(columns.values())).take(where)
    for flat, col in columns.items():
        cand = cand.append_column(flat, picked[col])
    return cand.combine_chunks()  # one chunk: the per-shard take() below is then a cheap gather


def _record(row: dict) -> dict:
    """A flat record row -> the winner/loser record of the shard json (media_path kept for the writer)."""
    rec = {k: row[k] for k in _RECORD_COLS}
    # params stay canonical json text: their keys differ by generator, and readers that infer a
    # schema from the first samples (datasets' webdataset builder) would drop or mistype the rest.
    rec["scores"] = {k.removeprefix(_SCORE): _num(v) for k, v in row.items() if k.startswith(_SCORE)}
    rec["advantages"] = {k.removeprefix(_ADV): _num(v) for k, v in row.items() if k.startswith(_ADV)}
    return rec


def _sample(row: dict, win: dict, lose: dict, scorers: list[str]) -> dict:
    return {
        "pair_id": row["pair_id"],
        "prompt_id": row["prompt_id"],
        "prompt": row["prompt"],
        "category": row["category"],
        "modality": row["modality"],
        "winner": _record(win),
        "loser": _record(lose),
        "margins": {s: _num(row[f"margin_{s}"]) for s in scorers},
        "agreement": {"agree": int(row["agree"]), "n_scorers": int(row["n_scorers"])},
        "vlm_probability": _num(row["p_vlm"]),
        "dataset_version": DATASET_VERSION,
    }


class _Hashing:
    """A write-only stream that hashes and counts what passes through (tarfile's "w|" mode only writes)."""

    def __init__(self, f: BinaryIO):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)


@ray.remote(num_cpus=1)
def _write_shard(
    media_root: str, folder: str, index: int, split: str, rows: pa.Table, winners: pa.Table, losers: pa.Table,
    scorers: list[str], ext: str,
) -> dict:
    """One shard: its tar streamed to a temp file and renamed into place, then its sidecar."""
    from pipeline.media import MediaStore

    media = MediaStore(media_root)
    name, side_name = shard_name(split, index), sidecar_name(split, index)
    samples = [_sample(r, w, lo, scorers) for r, w, lo in zip(rows.to_pylist(), winners.to_pylist(), losers.to_pylist())]
    sink: dict[str, _Hashing] = {}

    def write_tar(f: BinaryIO) -> None:
        sink["out"] = out = _Hashing(f)
        # The stream webdataset's TarWriter makes (default PAX format, members in sorted order), written with
        # the standard library: the same bytes, without importing webdataset (seconds) in every worker.
        with tarfile.open(fileobj=out, mode="w|") as tar:
            for s in samples:
                win_path, lose_path = s["winner"].pop("media_path"), s["loser"].pop("media_path")
                members = {
                    "json": canonical_json(s).encode("utf-8"),
                    "txt": s["prompt"].encode("utf-8"),
                    f"win.{ext}": media.read(win_path),
                    f"lose.{ext}": media.read(lose_path),
                }
                for suffix in sorted(members):
                    data = members[suffix]
                    info = tarfile.TarInfo(f"{s['pair_id']}.{suffix}")
                    info.size, info.mtime, info.mode = len(data), TAR_MTIME, TAR_MODE
                    info.uname = info.gname = TAR_OWNER
                    tar.addfile(info, io.BytesIO(data))

    write_atomic(Path(folder) / name, write_tar)
    side = (rows.drop_columns(["order"])
            .append_column("winner_generator", winners["generator"])
            .append_column("loser_generator", losers["generator"])
            .append_column("shard", pa.array([name] * rows.num_rows, pa.string())))
    side_path = write_table(side, Path(folder) / side_name)
    return {
        "name": name, "samples": rows.num_rows, "bytes": sink["out"].size, "sha256": sink["out"].sha.hexdigest(),
        "sidecar": side_name, "sidecar_sha256": hashlib.sha256(side_path.read_bytes()).hexdigest(),
    }


def _positions(group: pa.Table, side: str, records: pa.Table) -> np.ndarray:
    """Row of `records` holding each pair's `side` candidate; a clear error when one is missing."""
    where = pc.index_in(group[side], value_set=records["candidate_id"])
    if where.null_count:
        i = pc.index(pc.is_null(where), True).as_py()
        raise ValueError(
            f"selected pair {group['pair_id'][i].as_py()}: {side} {group[side][i].as_py()} is not in the candidates table"
        )
    return where.to_numpy()


def _counts(values: pd.Series | list) -> dict[str, int]:
    return {str(k): int(v) for k, v in sorted(pd.Series(values).value_counts().items(), key=lambda kv: str(kv[0]))}


def _run_bounded(submit: Callable[[int], ray.ObjectRef], n: int, limit: int) -> list[dict]:
    """The results of `submit(0)` .. `submit(n - 1)` in index order, with at most `limit` tasks in flight."""
    pending: dict[ray.ObjectRef, int] = {}
    results: dict[int, dict] = {}
    for index in range(n):
        if len(pending) >= limit:
            done, _ = ray.wait(list(pending), num_returns=1)
            results[pending.pop(done[0])] = ray.get(done[0])
        pending[submit(index)] = index
    for ref, index in pending.items():
        results[index] = ray.get(ref)
    return [results[i] for i in range(n)]


def _default_in_flight() -> int:
    return max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))


def _write_folder(
    group: pa.Table, records: pa.Table, folder: Path, *, media_root: str, scorers: list[str], image_format: str,
    samples_per_shard: int, name: str, limit: int,
) -> dict:
    """One modality's shards (Ray tasks, at most `limit` in flight), stale files removed, then its manifest."""
    modality = group["modality"][0].as_py()
    ext = media_extension(modality, image_format)
    split = group["split"][0].as_py()
    win_at, lose_at = _positions(group, "winner_id", records), _positions(group, "loser_id", records)
    starts = range(0, group.num_rows, samples_per_shard)

    def submit(index: int) -> ray.ObjectRef:
        span = np.arange(starts[index], min(starts[index] + samples_per_shard, group.num_rows))
        return _write_shard.remote(  # take() copies: a task's arguments are its own rows only
            media_root, str(folder), index, split, group.take(span),
            records.take(win_at[span]), records.take(lose_at[span]), scorers, ext,
        )

    infos = _run_bounded(submit, len(starts), limit)
    winners = records["generator"].take(win_at).to_numpy(zero_copy_only=False)
    categories = group["category"].to_numpy(zero_copy_only=False)
    by_category = pd.DataFrame({"category": categories, "generator": winners}).groupby("category", sort=True)["generator"]
    manifest = {
        "name": name,
        "dataset_version": DATASET_VERSION,
        "modality": modality,
        "split": split,
        "members": list(member_names(modality, image_format)),
        "num_samples": int(group.num_rows),
        "categories": _counts(categories),
        "winner_generators": _counts(winners),
        "winner_generators_by_category": {str(c): _counts(g) for c, g in by_category},
        "agreement": _counts(group["agree"].to_numpy()),
        "shards": infos,
    }
    keep = {i["name"] for i in infos} | {i["sidecar"] for i in infos}
    for stale in [*folder.glob("*.tar"), *folder.glob("*.parquet"), *folder.glob(".*.tmp")]:
        if stale.name not in keep:  # left by an earlier build with more shards, or temp files of a killed one
            stale.unlink()
    write_bytes(folder / MANIFEST_NAME, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return manifest


def write_shards(
    selected: pa.Table,
    candidates: pa.Table,
    scores: pa.Table,
    *,
    out_dir: str,
    media_root: str,
    scorers: list[str],
    score_cols: list[str],
    image_format: str,
    samples_per_shard: int,
    name: str,
    max_in_flight: int | None = None,
) -> dict[str, dict]:
    """Write every modality's shards, sidecars and manifest; returns the manifests by modality.

    `max_in_flight`: shard tasks submitted and not yet finished (default: twice the cluster's CPUs)."""
    needed = pc.unique(pa.chunked_array([*selected["winner_id"].chunks, *selected["loser_id"].chunks], pa.string()))
    records = _records(candidates, scores, score_cols, needed)
    limit = max_in_flight or _default_in_flight()
    manifests = {}
    for modality in sorted(pc.unique(selected["modality"]).to_pylist()):
        manifests[modality] = _write_folder(
            selected.filter(pc.equal(selected["modality"], modality)).sort_by("order").combine_chunks(), records,
            Path(out_dir) / "shards" / modality, media_root=media_root, scorers=scorers, image_format=image_format,
            samples_per_shard=samples_per_shard, name=name, limit=limit,
        )
    return manifests
