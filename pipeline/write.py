"""The write stage: selected pairs -> WebDataset tar shards (Ray tasks, one per shard), a sidecar
parquet per shard and the folder's manifest. Tars are reproducible: fixed member order, owner, mode
and mtime, and media bytes copied from `media/` without re-encoding."""
from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import ray

from pipeline.store import write_bytes, write_table
from schemas.ids import canonical_json
from schemas.shard import (
    DATASET_VERSION,
    MANIFEST_NAME,
    TAR_MTIME,
    TAR_OWNER,
    media_extension,
    member_names,
    shard_name,
    sidecar_name,
)

_RECORD_COLS = ("candidate_id", "generator", "seed", "params", "width", "height", "num_frames", "fps", "media_path")


def _num(x: Any) -> Any:
    """JSON-safe scalar: numpy -> python, NaN -> None."""
    if x is None:
        return None
    if isinstance(x, (np.floating, float)):
        return None if math.isnan(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def _records(candidates: pa.Table, scores: pa.Table, score_cols: list[str]) -> dict[str, dict]:
    """candidate_id -> its record in the shard json (plus the media path, popped by the writer)."""
    cand = candidates.to_pandas().set_index("candidate_id")
    sc = scores.to_pandas().set_index("candidate_id")
    out = {}
    for cid, row in cand.iterrows():
        rec = {k: _num(row[k]) for k in _RECORD_COLS if k != "candidate_id"}
        rec["candidate_id"] = cid
        # params stay canonical json text: their keys differ by generator, and readers that infer a
        # schema from the first samples (datasets' webdataset builder) would drop or mistype the rest.
        s = sc.loc[cid] if cid in sc.index else None
        rec["scores"] = {c: _num(s[c]) if s is not None else None for c in score_cols}
        rec["advantages"] = {c: _num(s[f"{c}_advantage"]) if s is not None else None for c in score_cols}
        out[cid] = rec
    return out


def _sample(row: dict, records: dict[str, dict], scorers: list[str]) -> dict:
    win, lose = dict(records[row["winner_id"]]), dict(records[row["loser_id"]])
    return {
        "pair_id": row["pair_id"],
        "prompt_id": row["prompt_id"],
        "prompt": row["prompt"],
        "category": row["category"],
        "modality": row["modality"],
        "winner": win,
        "loser": lose,
        "margins": {s: _num(row[f"margin_{s}"]) for s in scorers},
        "agreement": {"agree": int(row["agree"]), "n_scorers": int(row["n_scorers"])},
        "vlm_probability": _num(row["p_vlm"]),
        "dataset_version": DATASET_VERSION,
    }


@ray.remote(num_cpus=1)
def _write_shard(media_root: str, folder: str, name: str, samples: list[dict], ext: str) -> dict:
    import webdataset as wds

    from pipeline.media import MediaStore

    media = MediaStore(media_root)
    buf = io.BytesIO()
    with wds.TarWriter(buf, user=TAR_OWNER, group=TAR_OWNER, mode=0o444, mtime=TAR_MTIME) as sink:
        for s in samples:
            win_path, lose_path = s["winner"].pop("media_path"), s["loser"].pop("media_path")
            sink.write(
                {
                    "__key__": s["pair_id"],
                    "json": canonical_json(s).encode("utf-8"),
                    "txt": s["prompt"].encode("utf-8"),
                    f"win.{ext}": media.read(win_path),
                    f"lose.{ext}": media.read(lose_path),
                }
            )
    data = buf.getvalue()
    write_bytes(Path(folder) / name, data)
    return {"name": name, "samples": len(samples), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


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
) -> dict[str, dict]:
    """Write every modality's shards, sidecars and manifest; returns the manifests by modality."""
    records = _records(candidates, scores, score_cols)
    sel = selected.to_pandas()
    manifests = {}
    for modality, group in sel.groupby("modality", sort=True):
        group = group.sort_values("order", kind="stable")
        folder = Path(out_dir) / "shards" / modality
        ext = media_extension(modality, image_format)
        split = str(group["split"].iloc[0])
        jobs, sidecars = [], []
        for index, start in enumerate(range(0, len(group), samples_per_shard)):
            chunk = group.iloc[start : start + samples_per_shard]
            rows = chunk.to_dict("records")
            samples = [_sample(r, records, scorers) for r in rows]
            side = chunk.assign(
                winner_generator=[records[r["winner_id"]]["generator"] for r in rows],
                loser_generator=[records[r["loser_id"]]["generator"] for r in rows],
                shard=shard_name(split, index),
            ).drop(columns=["order"])
            side_path = write_table(pa.Table.from_pandas(side, preserve_index=False), folder / sidecar_name(split, index))
            sidecars.append(side_path)
            jobs.append(_write_shard.remote(media_root, str(folder), shard_name(split, index), samples, ext))
        shards = ray.get(jobs)
        for info, side_path in zip(shards, sidecars):
            info["sidecar"] = side_path.name
            info["sidecar_sha256"] = hashlib.sha256(side_path.read_bytes()).hexdigest()
        winners = [records[w]["generator"] for w in group["winner_id"]]
        manifest = {
            "name": name,
            "dataset_version": DATASET_VERSION,
            "modality": modality,
            "split": split,
            "members": list(member_names(modality, image_format)),
            "num_samples": int(len(group)),
            "categories": {k: int(v) for k, v in sorted(group["category"].value_counts().items())},
            "winner_generators": {k: int(v) for k, v in sorted(pd.Series(winners).value_counts().items())},
            "agreement": {str(k): int(v) for k, v in sorted(group["agree"].value_counts().items())},
            "shards": shards,
        }
        keep = {i["name"] for i in shards} | {i["sidecar"] for i in shards}
        for stale in [*folder.glob("*.tar"), *folder.glob("*.parquet")]:
            if stale.name not in keep:  # left by an earlier build of this folder with more shards
                stale.unlink()
        write_bytes(folder / MANIFEST_NAME, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
        manifests[modality] = manifest
    return manifests
