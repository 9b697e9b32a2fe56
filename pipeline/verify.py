"""`vipo verify`: check a built dataset folder against the shard contract (schemas/shard.py).

Reads tars with the standard library only (nothing is unpickled) and size-checks images before decoding,
so it is also safe on a dataset from elsewhere.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from schemas.categories import CATEGORIES
from schemas.ids import ID_HEX
from schemas.shard import JSON_FIELDS, MANIFEST_NAME, RECORD_FIELDS

_KEY = re.compile(rf"^[0-9a-f]{{{ID_HEX}}}$")


def _decodes(member: str, data: bytes) -> str | None:
    """None if the media decodes, else why not."""
    try:
        if member.endswith(".mp4"):
            import av

            with av.open(io.BytesIO(data)) as c:
                n = sum(1 for _ in c.decode(video=0))
            return None if n > 0 else "video has no frames"
        from pipeline.media import decode_image

        decode_image(data).load()
        return None
    except Exception as err:  # noqa: BLE001 - reported, not raised
        return f"{type(err).__name__}: {err}"


def _samples(path: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path, "r:*") as tar:
        for info in tar:
            if not info.isfile():
                continue
            key, _, suffix = info.name.partition(".")
            samples.setdefault(key, {})[suffix] = tar.extractfile(info).read()
    return samples


def _check_sample(where: str, key: str, members: dict[str, bytes], expected: list[str], modality: str) -> list[str]:
    bad = []
    if not _KEY.match(key):
        bad.append(f"{where}: key {key!r} is not {ID_HEX} lowercase hex")
    if sorted(members) != sorted(expected):
        bad.append(f"{where}: sample {key}: members {sorted(members)}, expected {sorted(expected)}")
    try:
        meta = json.loads(members.get("json", b""))
    except ValueError as err:
        return bad + [f"{where}: sample {key}: json does not parse ({err})"]
    missing = [f for f in JSON_FIELDS if f not in meta]
    if missing:
        bad.append(f"{where}: sample {key}: json lacks {missing}")
    if meta.get("pair_id") != key:
        bad.append(f"{where}: sample {key}: json pair_id {meta.get('pair_id')!r} differs from the key")
    cat = meta.get("category")
    if cat not in CATEGORIES or CATEGORIES[cat].modality != modality or meta.get("modality") != modality:
        bad.append(f"{where}: sample {key}: category {cat!r} / modality {meta.get('modality')!r} do not fit {modality}")
    for side in ("winner", "loser"):
        rec = meta.get(side) or {}
        lacking = [f for f in RECORD_FIELDS if f not in rec]
        if lacking:
            bad.append(f"{where}: sample {key}: {side} lacks {lacking}")
    if "txt" in members and members["txt"].decode("utf-8", "replace") != meta.get("prompt"):
        bad.append(f"{where}: sample {key}: txt differs from the json prompt")
    for m in expected:
        if m.startswith(("win.", "lose.")) and m in members:
            why = _decodes(m, members[m])
            if why:
                bad.append(f"{where}: sample {key}: {m} does not decode ({why})")
    return bad


def verify_folder(folder: Path, modality: str) -> list[str]:
    where = str(folder)
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.exists():
        return [f"{where}: no {MANIFEST_NAME}"]
    try:
        manifest = json.loads(manifest_path.read_text())
    except ValueError as err:
        return [f"{manifest_path}: does not parse ({err})"]
    problems: list[str] = []
    expected = list(manifest.get("members", []))
    listed = {s["name"] for s in manifest.get("shards", [])}
    for stray in sorted(p.name for p in folder.glob("*.tar") if p.name not in listed):
        problems.append(f"{folder / stray}: not listed in {MANIFEST_NAME}")
    categories: Counter[str] = Counter()
    total = 0
    for shard in manifest.get("shards", []):
        tar_path, side_path = folder / shard["name"], folder / shard.get("sidecar", "")
        if not tar_path.exists():
            problems.append(f"{tar_path}: missing")
            continue
        if hashlib.sha256(tar_path.read_bytes()).hexdigest() != shard.get("sha256"):
            problems.append(f"{tar_path}: sha256 differs from {MANIFEST_NAME}")
        try:
            samples = _samples(tar_path)
        except (tarfile.TarError, OSError) as err:
            problems.append(f"{tar_path}: unreadable tar ({err})")
            continue
        for key, members in samples.items():
            problems += _check_sample(str(tar_path), key, members, expected, modality)
            try:
                categories[json.loads(members.get("json", b"{}")).get("category")] += 1
            except ValueError:
                pass
        total += len(samples)
        if len(samples) != shard.get("samples"):
            problems.append(f"{tar_path}: {len(samples)} samples, {MANIFEST_NAME} says {shard.get('samples')}")
        if not side_path.is_file():
            problems.append(f"{side_path}: sidecar missing")
        else:
            if hashlib.sha256(side_path.read_bytes()).hexdigest() != shard.get("sidecar_sha256"):
                problems.append(f"{side_path}: sha256 differs from {MANIFEST_NAME}")
            ids = pq.read_table(side_path, columns=["pair_id"]).column(0).to_pylist()
            if ids != list(samples):
                problems.append(f"{side_path}: pair_ids differ from {tar_path.name}'s keys")
    if total != manifest.get("num_samples"):
        problems.append(f"{manifest_path}: num_samples {manifest.get('num_samples')} but the shards hold {total}")
    if dict(categories) != manifest.get("categories"):
        problems.append(f"{manifest_path}: categories {manifest.get('categories')} but the shards hold {dict(categories)}")
    return problems


def verify_dataset(root: str | Path) -> list[str]:
    """Every problem found under `root/shards/` (empty list: the dataset is sound)."""
    root = Path(root)
    shards = root / "shards" if (root / "shards").is_dir() else root
    folders = [p for p in sorted(shards.iterdir()) if p.is_dir() and p.name in ("image", "video")] if shards.is_dir() else []
    if not folders:
        return [f"{root}: no shards/image or shards/video folder"]
    problems: list[str] = []
    for folder in folders:
        problems += verify_folder(folder, folder.name)
    return problems
