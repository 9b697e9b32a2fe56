"""`vipo verify`: check a built dataset folder against the shard contract (schemas/shard.py) and its
balance against the manifest and the build's `config.yaml`.

Reads tars with the standard library only (nothing is unpickled), parquet sidecars with pyarrow and the
config with `yaml.safe_load`, and size-checks images before decoding, so it is also safe on a dataset
from elsewhere.

Two entry points: `verify_dataset(root)` lists problems (empty: sound), `balance_report(root)` lists
`warning:` lines that are not problems (a category short of its quota).
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
CONFIG_NAME = "config.yaml"  # the exact config of the build, beside shards/ (pipeline/build.py)
MAX_CONFIG_BYTES = 1 << 20  # a build config is a few KiB; refuse to parse anything larger
PREFIX_MIN_SAMPLES = 4  # categories with fewer samples in a folder are not judged for prefix balance
# Manifest count field -> (sidecar column, how a sample's json gives it).
COUNTED = {
    "categories": ("category", lambda meta: meta.get("category")),
    "winner_generators": ("winner_generator", lambda meta: (meta.get("winner") or {}).get("generator")),
    "agreement": ("agree", lambda meta: (meta.get("agreement") or {}).get("agree")),
}


def _count_key(value) -> str | None:
    """Counts are keyed by strings in the manifest (agreement's ints included)."""
    return None if value is None or isinstance(value, (dict, list)) else str(value)


def _decodes(member: str, data: bytes) -> str | None:
    """None if the media decodes, else why not."""
    try:
        if member.endswith(".mp4"):
            import av

            with av.open(io.BytesIO(data)) as c:
                n = sum(1 for _ in c.decode(video=0))
            return None if n > 0 else "video has no frames"
        from pipeline.media import decode_image  # refuses oversized images from the header alone

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


def _meta(members: dict[str, bytes]) -> dict:
    try:
        meta = json.loads(members.get("json", b""))
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


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
    if not isinstance(meta, dict):
        return bad + [f"{where}: sample {key}: json is not an object"]
    missing = [f for f in JSON_FIELDS if f not in meta]
    if missing:
        bad.append(f"{where}: sample {key}: json lacks {missing}")
    if meta.get("pair_id") != key:
        bad.append(f"{where}: sample {key}: json pair_id {meta.get('pair_id')!r} differs from the key")
    cat = meta.get("category")
    if not isinstance(cat, str) or cat not in CATEGORIES or CATEGORIES[cat].modality != modality or meta.get("modality") != modality:
        bad.append(f"{where}: sample {key}: category {cat!r} / modality {meta.get('modality')!r} do not fit {modality}")
    for side in ("winner", "loser"):
        rec = meta.get(side)
        lacking = [f for f in RECORD_FIELDS if f not in rec] if isinstance(rec, dict) else list(RECORD_FIELDS)
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


def _read_sidecar(path: Path) -> tuple[dict[str, list] | None, str | None]:
    """The sidecar's pair_id and counted columns as lists, or why they cannot be read."""
    columns = ["pair_id", *(col for col, _ in COUNTED.values())]
    try:
        table = pq.read_table(path, columns=columns)
    except Exception as err:  # noqa: BLE001 - reported, not raised (pyarrow raises many types here)
        return None, f"{type(err).__name__}: {err}"
    return {name: table.column(name).to_pylist() for name in columns}, None


def _check_sidecar_rows(side_path: Path, tar_name: str, side: dict[str, list], metas: list[dict]) -> list[str]:
    """Row by row, the sidecar's counted columns against the samples' json (same order)."""
    bad = []
    for field, (col, from_json) in COUNTED.items():
        for i, (pid, got, meta) in enumerate(zip(side["pair_id"], side[col], metas)):
            want = from_json(meta)
            if _count_key(got) != _count_key(want):
                bad.append(f"{side_path}: row {i} ({pid}): {col} {got!r} but {tar_name}'s json says {want!r}")
    return bad


def _compare_counts(manifest_path: Path, manifest: dict, shards: dict[str, Counter], sidecars: dict[str, Counter] | None) -> list[str]:
    """The manifest's count fields against what the shards' json and (when all were read) the sidecars hold."""
    bad = []
    for field in COUNTED:
        listed = manifest.get(field)
        if not isinstance(listed, dict):
            bad.append(f"{manifest_path}: {field}: missing or not a mapping of counts")
            continue
        held = shards[field]
        side = sidecars[field] if sidecars is not None else None
        for key in sorted({*map(str, listed), *held, *(side or {})}):
            m, j = listed.get(key, 0), held.get(key, 0)
            s = side.get(key, 0) if side is not None else j
            if m != j or m != s:
                where = f"the shards hold {j}" + (f" and the sidecars {s}" if side is not None else "")
                bad.append(f"{manifest_path}: {field}: {key}: {m!r}, but {where}")
    return bad


def _prefix_bounds(n_cat: int, total: int, half: int, k: int) -> tuple[int, int]:
    """Smallest and largest count of a category of `n_cat` (of `total`, `k` categories) that the first
    `half` samples of an interleaved folder can hold.

    The select stage gives each of a category's n samples a fractional key (i + U) / n, i a permutation
    index, U uniform in [0, 1): the count below any threshold t is floor(n t) or one more. So a prefix
    of `half` samples ends at t in [(half - k) / total, (half + k) / total) and holds strictly between
    n (half - k) / total - 1 and n (half + k) / total + 1 of the category. The bounds are exact
    consequences of the interleaving, so a sound build never trips them.
    """
    lo = max(0, (n_cat * (half - k) - total) // total + 1)  # smallest h with h * total > n (half - k) - total
    hi = min(n_cat, half, -(-(n_cat * (half + k) + total) // total) - 1)  # largest h with h * total < n (half + k) + total
    return lo, hi


def prefix_problems(where: str, categories: list[str | None]) -> list[str]:
    """Problems with the category mix of the first half of a folder's samples (in shard order) against
    the whole: every category with at least PREFIX_MIN_SAMPLES samples must be within `_prefix_bounds`."""
    total, half = len(categories), len(categories) // 2
    whole, first = Counter(categories), Counter(categories[:half])
    bad = []
    for cat, n in sorted(whole.items(), key=lambda kv: str(kv[0])):
        if cat is None or n < PREFIX_MIN_SAMPLES:
            continue
        lo, hi = _prefix_bounds(n, total, half, len(whole))
        if not lo <= first[cat] <= hi:
            bad.append(
                f"{where}: the first {half} of {total} samples hold {first[cat]} {cat} samples; with {n} of "
                f"{total} in the folder an interleaved order holds {lo} to {hi} (samples are not interleaved across categories)"
            )
    return bad


def _safe_name(name) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name and "\\" not in name


def _load_manifest(folder: Path) -> tuple[dict | None, list[str]]:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return None, [f"{folder}: no {MANIFEST_NAME}"]
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        return None, [f"{path}: does not parse ({err})"]
    if not isinstance(manifest, dict):
        return None, [f"{path}: not a JSON object"]
    shards = manifest.get("shards", [])
    if not isinstance(shards, list) or not all(isinstance(s, dict) for s in shards):
        return None, [f"{path}: shards: not a list of objects"]
    members = manifest.get("members", [])
    if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
        return None, [f"{path}: members: not a list of names"]
    # Names are joined to the folder and read: only plain file names, never a path out of it.
    bad = [f"{path}: shards: {k} {s.get(k)!r} is not a plain file name"
           for s in shards for k in ("name", "sidecar") if (k == "name" or s.get(k) is not None) and not _safe_name(s.get(k))]
    return (None if bad else manifest), bad


def _check_folder(folder: Path, modality: str) -> tuple[list[str], Counter]:
    """Problems of one shard folder, and its per-category sample counts (from the samples' json)."""
    where = str(folder)
    manifest_path = folder / MANIFEST_NAME
    manifest, problems = _load_manifest(folder)
    if manifest is None:
        return problems, Counter()
    expected = list(manifest.get("members", []))
    listed = {s["name"] for s in manifest["shards"]}
    for stray in sorted(p.name for p in folder.glob("*.tar") if p.name not in listed):
        problems.append(f"{folder / stray}: not listed in {MANIFEST_NAME}")
    held = {field: Counter() for field in COUNTED}
    side_counts: dict[str, Counter] | None = {field: Counter() for field in COUNTED}
    order: list[str | None] = []  # the samples' categories in shard order
    complete = True
    total = 0
    for shard in manifest["shards"]:
        tar_path = folder / shard["name"]
        side_path = folder / shard["sidecar"] if shard.get("sidecar") is not None else None
        if not tar_path.is_file():
            problems.append(f"{tar_path}: missing")
            complete, side_counts = False, None
            continue
        if hashlib.sha256(tar_path.read_bytes()).hexdigest() != shard.get("sha256"):
            problems.append(f"{tar_path}: sha256 differs from {MANIFEST_NAME}")
        try:
            samples = _samples(tar_path)
        except (tarfile.TarError, OSError, EOFError) as err:
            problems.append(f"{tar_path}: unreadable tar ({err})")
            complete, side_counts = False, None
            continue
        metas = []
        for key, members in samples.items():
            problems += _check_sample(str(tar_path), key, members, expected, modality)
            meta = _meta(members)
            metas.append(meta)
            for field, (_, from_json) in COUNTED.items():
                value = _count_key(from_json(meta))
                if value is not None:
                    held[field][value] += 1
            cat = meta.get("category")
            order.append(cat if isinstance(cat, str) else None)
        total += len(samples)
        if len(samples) != shard.get("samples"):
            problems.append(f"{tar_path}: {len(samples)} samples, {MANIFEST_NAME} says {shard.get('samples')}")
        if side_path is None or not side_path.is_file():
            problems.append(f"{side_path or tar_path}: sidecar missing")
            side_counts = None
            continue
        if hashlib.sha256(side_path.read_bytes()).hexdigest() != shard.get("sidecar_sha256"):
            problems.append(f"{side_path}: sha256 differs from {MANIFEST_NAME}")
        side, why = _read_sidecar(side_path)
        if side is None:
            problems.append(f"{side_path}: unreadable sidecar ({why})")
            side_counts = None
            continue
        if side["pair_id"] != list(samples):
            problems.append(f"{side_path}: pair_ids differ from {tar_path.name}'s keys")
        else:
            problems += _check_sidecar_rows(side_path, tar_path.name, side, metas)
        if side_counts is not None:
            for field, (col, _) in COUNTED.items():
                side_counts[field].update(k for k in map(_count_key, side[col]) if k is not None)
    if total != manifest.get("num_samples"):
        problems.append(f"{manifest_path}: num_samples {manifest.get('num_samples')} but the shards hold {total}")
    problems += _compare_counts(manifest_path, manifest, held, side_counts)
    if complete:
        problems += prefix_problems(where, order)
    return problems, held["categories"]


def verify_folder(folder: Path, modality: str) -> list[str]:
    return _check_folder(folder, modality)[0]


def _layout(root: Path) -> tuple[list[Path], Path]:
    """The shard folders under `root` (a build folder or its shards/ folder) and where config.yaml would be."""
    shards = root / "shards" if (root / "shards").is_dir() else root
    build = root if shards != root else root.parent
    folders = [p for p in sorted(shards.iterdir()) if p.is_dir() and p.name in ("image", "video")] if shards.is_dir() else []
    return folders, build / CONFIG_NAME


def _quotas(config_path: Path) -> tuple[dict[str, int] | None, list[str]]:
    """category -> quota from the build's config.yaml (None when absent), and problems reading it."""
    if not config_path.is_file():
        return None, []
    if config_path.stat().st_size > MAX_CONFIG_BYTES:
        return {}, [f"{config_path}: over {MAX_CONFIG_BYTES} bytes; not a build config"]
    import yaml

    try:
        data = yaml.safe_load(config_path.read_text())  # plain data only: no tags, no objects
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        return {}, [f"{config_path}: does not parse ({err})"]
    categories = data.get("categories") if isinstance(data, dict) else None
    if not isinstance(categories, dict) or not categories:
        return {}, [f"{config_path}: categories: missing or not a mapping"]
    quotas, bad = {}, []
    for name, spec in categories.items():
        quota = spec.get("quota") if isinstance(spec, dict) else None
        if isinstance(quota, bool) or not isinstance(quota, int) or quota < 1:
            bad.append(f"{config_path}: categories: {name}: quota: must be a positive integer, got {quota!r}")
        else:
            quotas[str(name)] = quota
    return quotas, bad


def _balance(config_path: Path, counts: Counter) -> tuple[list[str], list[str]]:
    """(problems, warnings) of the selected counts per category against the config's quotas."""
    quotas, problems = _quotas(config_path)
    if quotas is None:
        return [], []
    warnings = []
    for cat in sorted(set(counts) - set(quotas)):
        if not problems:  # an unreadable config already says why
            problems.append(f"{config_path}: categories: no {cat!r}, but the shards hold {counts[cat]} of its samples")
    for cat, quota in sorted(quotas.items()):
        n = counts.get(cat, 0)
        if n > quota:
            problems.append(f"{config_path}: categories: {cat}: quota {quota}, but the shards hold {n} of its samples")
        elif n < quota:
            warnings.append(f"warning: {config_path}: categories: {cat}: {n} of its quota {quota} selected (short by {quota - n})")
    return problems, warnings


def verify_dataset(root: str | Path) -> list[str]:
    """Every problem found under `root/shards/` (empty list: the dataset is sound), quotas included when
    the build folder keeps its config.yaml."""
    root = Path(root)
    folders, config_path = _layout(root)
    if not folders:
        return [f"{root}: no shards/image or shards/video folder"]
    problems: list[str] = []
    counts: Counter = Counter()
    for folder in folders:
        found, held = _check_folder(folder, folder.name)
        problems += found
        counts += held
    problems += _balance(config_path, counts)[0]
    return problems


def balance_report(root: str | Path) -> list[str]:
    """`warning:` lines that are not problems: categories selected below their quota in config.yaml.

    Counts come from the manifests (cheap; `verify_dataset` checks them against the shards)."""
    folders, config_path = _layout(Path(root))
    counts: Counter = Counter()
    for folder in folders:
        manifest, _ = _load_manifest(folder)
        listed = manifest.get("categories") if manifest else None
        if isinstance(listed, dict):
            counts.update({str(k): v for k, v in listed.items() if isinstance(v, int) and not isinstance(v, bool)})
    return _balance(config_path, counts)[1]
