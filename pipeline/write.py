"""The write stage: selected pairs -> WebDataset tar shards, a sidecar parquet per shard and the folder's
manifest, then the dataset card.

A unit is one shard: a modality and a range of the sample order (sort_key, pair_id), planned from the
selected table's small columns. The worker reads its own rows (their winner / loser records came with
them from the select stage), streams the tar into a temp file and renames it into place, then its
sidecar; its output row (name, checksums, counts) is the shard's done marker, and `finalize` builds
each folder's manifest from those rows alone.

Tars are reproducible: fixed member order, owner, mode and mtime, and media bytes copied from `media/`
without re-encoding.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from pipeline.catalogue import Table, UnitRecord
from pipeline.records import _num
from pipeline.stage import TaskStage
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
from schemas.tables import SHARD_INDEX
from schemas.units import Unit, make_unit

_SIDECAR_DROP = ("sort_key", "winner_record", "loser_record")


def _sample(row: dict, win: dict, lose: dict, scorers: list[str]) -> dict:
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


class _Hashing:
    """A write-only stream that hashes and counts what passes through (tarfile's "w|" mode only writes)."""

    def __init__(self, f: BinaryIO):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)


def write_shard(media_root: str, folder: str, index: int, split: str, rows: pa.Table, scorers: list[str], ext: str) -> dict:
    """One shard from its selected rows (in sample order): the tar streamed to a temp file and renamed
    into place, then its sidecar. Returns its manifest entry."""
    from pipeline.media import MediaStore

    media = MediaStore(media_root)
    name, side_name = shard_name(split, index), sidecar_name(split, index)
    raw = list(zip(rows["winner_record"].to_pylist(), rows["loser_record"].to_pylist()))
    for i, (w, lo) in enumerate(raw):
        if w is None or lo is None:
            raise ValueError(f"selected pair {rows['pair_id'][i].as_py()}: no winner/loser record (rerun the select stage)")
    records = [(json.loads(w), json.loads(lo)) for w, lo in raw]
    samples = [_sample(r, w, lo, scorers) for r, (w, lo) in zip(rows.to_pylist(), records)]
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
    side = (rows.drop_columns(list(_SIDECAR_DROP))
            .append_column("winner_generator", pa.array([w["generator"] for w, _ in records], pa.string()))
            .append_column("loser_generator", pa.array([lo["generator"] for _, lo in records], pa.string()))
            .append_column("shard", pa.array([name] * rows.num_rows, pa.string())))
    side_path = write_table(side, Path(folder) / side_name)
    by_cat: dict[str, Counter] = {}
    for s in samples:
        by_cat.setdefault(s["category"], Counter())[s["winner"]["generator"]] += 1
    counts = {
        "categories": dict(Counter(s["category"] for s in samples)),
        "winner_generators_by_category": {c: dict(v) for c, v in by_cat.items()},
        "agreement": dict(Counter(str(s["agreement"]["agree"]) for s in samples)),
    }
    return {
        "name": name, "samples": rows.num_rows, "bytes": sink["out"].size, "sha256": sink["out"].sha.hexdigest(),
        "sidecar": side_name, "sidecar_sha256": hashlib.sha256(side_path.read_bytes()).hexdigest(),
        "counts": canonical_json(counts),
    }


def shard_bounds(selected: Table, samples_per_shard: int) -> dict[str, list[tuple[float, str]]]:
    """Per modality, the (sort_key, pair_id) of each shard's first sample: the only rows-sized work of the
    stage's planning, on three small columns (run as a Ray task when the build is on Ray)."""
    t = selected.read(["modality", "sort_key", "pair_id"])
    out: dict[str, list[tuple[float, str]]] = {}
    for modality in sorted(pc.unique(t["modality"]).to_pylist()):
        mine = t.filter(pc.equal(t["modality"], modality)).sort_by([("sort_key", "ascending"), ("pair_id", "ascending")])
        keys, ids = mine["sort_key"].to_numpy(), mine["pair_id"]
        starts = range(0, mine.num_rows, samples_per_shard)
        out[modality] = [(float(keys[i]), ids[i].as_py()) for i in starts]
    return out


def _merge(counts: list[dict]) -> dict:
    out: dict[str, Any] = {"categories": Counter(), "winner_generators_by_category": {}, "agreement": Counter()}
    for c in counts:
        out["categories"].update(c["categories"])
        out["agreement"].update(c["agreement"])
        for cat, gens in c["winner_generators_by_category"].items():
            out["winner_generators_by_category"].setdefault(cat, Counter()).update(gens)
    return out


def _sorted_counts(c: Counter | dict) -> dict[str, int]:
    return {str(k): int(v) for k, v in sorted(c.items(), key=lambda kv: str(kv[0]))}


@dataclass
class ShardStage(TaskStage):
    """One unit per shard; `finalize` writes the manifests (and removes files of earlier, larger builds)."""

    selected: Table | None = None
    shard_index: Table | None = None
    out_dir: str = ""
    media_root: str = ""
    scorers: tuple[str, ...] = ()
    image_format: str = "jpg"
    samples_per_shard: int = 1000
    dataset_name: str = "vipo"
    split: str = "train"
    use_ray: bool = False

    name: ClassVar[str] = "write"
    verb: ClassVar[str] = "written"

    def outputs(self) -> tuple[Table, ...]:
        return (self.shard_index,)

    def plan(self) -> list[Unit]:
        recs = self.need(self.selected, "select")
        if self.use_ray:
            import ray

            bounds = ray.get(ray.remote(shard_bounds).options(num_cpus=1).remote(self.selected, self.samples_per_shard))
        else:
            bounds = shard_bounds(self.selected, self.samples_per_shard)
        source = sorted(recs)
        total = {m: 0 for m in bounds}
        units = []
        settings = (self.samples_per_shard, self.image_format, self.dataset_name, self.split, DATASET_VERSION, list(self.scorers))
        for modality, starts in bounds.items():
            for i, lo in enumerate(starts):
                hi = starts[i + 1] if i + 1 < len(starts) else None
                units.append(make_unit("write", (modality, i, settings, source), key=modality, rows=self.samples_per_shard,
                                       modality=modality, index=i, lo=list(lo), hi=list(hi) if hi else None))
            total[modality] = len(starts)
        return units

    def process(self, unit: Unit) -> pa.Table:
        modality, index = unit.param("modality"), unit.param("index")
        lo, hi = unit.param("lo"), unit.param("hi")
        where = (ds.field("modality") == modality) & (ds.field("sort_key") >= lo[0])
        if hi is not None:
            where &= ds.field("sort_key") <= hi[0]
        rows = self.selected.read(filter=where).sort_by([("sort_key", "ascending"), ("pair_id", "ascending")])
        keys, ids = rows["sort_key"].to_pylist(), rows["pair_id"].to_pylist()
        keep = [i for i, k in enumerate(zip(keys, ids)) if tuple(lo) <= k and (hi is None or k < tuple(hi))]
        rows = rows.take(pa.array(keep, pa.int64())).combine_chunks()
        ext = media_extension(modality, self.image_format)
        folder = Path(self.out_dir) / "shards" / modality
        info = write_shard(self.media_root, str(folder), index, self.split, rows, list(self.scorers), ext)
        self.count(n_in=rows.num_rows, n_out=rows.num_rows)
        return pa.Table.from_pylist([{"modality": modality, "index": index, **info}], schema=SHARD_INDEX)

    def finalize(self, records: dict[str, UnitRecord]) -> str:
        index = self.shard_index.read(records=records.values()).to_pylist()
        self.manifests = {}
        for modality in sorted({r["modality"] for r in index}):
            shards = sorted((r for r in index if r["modality"] == modality), key=lambda r: r["index"])
            self.manifests[modality] = self._manifest(modality, shards)
        for modality in ("image", "video"):  # a modality this build no longer has
            folder = Path(self.out_dir) / "shards" / modality
            if modality not in self.manifests and folder.exists():
                for stale in [*folder.glob("*.tar"), *folder.glob("*.parquet"), folder / MANIFEST_NAME]:
                    stale.unlink(missing_ok=True)
        n = sum(len(m["shards"]) for m in self.manifests.values())
        return f"{n} shards"

    def _manifest(self, modality: str, shards: list[dict]) -> dict:
        folder = Path(self.out_dir) / "shards" / modality
        counts = _merge([json.loads(r["counts"]) for r in shards])
        winners: Counter = Counter()
        for gens in counts["winner_generators_by_category"].values():
            winners.update(gens)
        infos = [{k: r[k] for k in ("name", "samples", "bytes", "sha256", "sidecar", "sidecar_sha256")} for r in shards]
        manifest = {
            "name": self.dataset_name,
            "dataset_version": DATASET_VERSION,
            "modality": modality,
            "split": self.split,
            "members": list(member_names(modality, self.image_format)),
            "num_samples": int(sum(r["samples"] for r in shards)),
            "categories": _sorted_counts(counts["categories"]),
            "winner_generators": _sorted_counts(winners),
            "winner_generators_by_category": {c: _sorted_counts(g) for c, g in sorted(counts["winner_generators_by_category"].items())},
            "agreement": _sorted_counts(counts["agreement"]),
            "shards": infos,
        }
        keep = {i["name"] for i in infos} | {i["sidecar"] for i in infos}
        for stale in [*folder.glob("*.tar"), *folder.glob("*.parquet"), *folder.glob(".*.tmp")]:
            if stale.name not in keep:  # left by an earlier build with more shards, or temp files of a killed one
                stale.unlink()
        write_bytes(folder / MANIFEST_NAME, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
        return manifest
