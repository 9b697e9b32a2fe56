"""`vipo verify`: check a built dataset folder against the shard contract (schemas/shard.py) and its
balance against the manifest and the build's `config.yaml`.

Reads tars through `pipeline.formats.shards` (webdataset's key rule, one sample in memory at a time,
only the folder's members read, as bytes: nothing is unpickled, none over its cap), parquet sidecars
with pyarrow after their footer is checked, JSON within `pipeline.formats.bounded`'s size and depth
caps and the config with `yaml.safe_load`, and size-checks images before decoding, so it is also safe
on a dataset from elsewhere (docs/reliability.md).

Balance is checked against the build's config.yaml when the folder keeps it: every category within its
quota, and, when `selection.max_winner_generator_share` is set, no generator winning more than
floor(max(share, 1/k) * n) of a category's n pairs, k the generators its pairs show (`cap_problems`).

Two entry points: `verify_dataset(root)` lists problems (empty: sound), `balance_report(root)` lists
`warning:` lines that are not problems (a category short of its quota).
"""
from __future__ import annotations

import io
import math
import re
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.formats.bounded import MAX_MANIFEST_BYTES, InputError, load_json
from pipeline.formats.parquet import row_group_problem
from pipeline.formats.shards import READ_ERRORS, SHARD_SUFFIXES, Sample, stream_samples, unknown_member
from pipeline.store import file_sha256
from schemas.categories import CATEGORIES
from schemas.ids import ID_HEX
from schemas.shard import JSON_FIELDS, MANIFEST_NAME, RECORD_FIELDS

_KEY = re.compile(rf"^[0-9a-f]{{{ID_HEX}}}$")
CONFIG_NAME = "config.yaml"  # the exact config of the build, beside shards/ (pipeline/build.py)
MAX_CONFIG_BYTES = 1 << 20  # a build config is a few KiB; refuse to parse anything larger
PREFIX_MIN_SAMPLES = 4  # categories with fewer samples in a folder are not judged for prefix balance
CAP_SLACK = 1e-9  # floor(share * n + slack): a share like 0.3 of 10 pairs allows 3, not 2 (float rounding)
MAX_FRAME_PIXELS = 64_000_000  # a video frame past this is not decoded: pipeline.media.decode_image's default for images


def _winner_generator(meta: dict):
    winner = meta.get("winner")
    return winner.get("generator") if isinstance(winner, dict) else None


# Manifest count field -> (sidecar columns, how a sample's json gives the same values). A field of two
# columns is a nested mapping in the manifest ({category: {generator: count}}), keyed here "category/generator"
# (category names hold no "/").
COUNTED = {
    "categories": (("category",), lambda meta: (meta.get("category"),)),
    "winner_generators": (("winner_generator",), lambda meta: (_winner_generator(meta),)),
    "agreement": (("agree",), lambda meta: ((meta.get("agreement") or {}).get("agree"),)),
    "winner_generators_by_category": (("category", "winner_generator"), lambda meta: (meta.get("category"), _winner_generator(meta))),
}
OPTIONAL = frozenset({"winner_generators_by_category"})  # manifests written before it was added lack it
# Samples per "category/generator" over both sides of each pair: which generators a category's pairs show.
SEEN = "generators_seen"


def _count_key(values: tuple) -> str | None:
    """Counts are keyed by strings in the manifest (agreement's ints included); None if a part is unusable."""
    if any(v is None or isinstance(v, (dict, list)) for v in values):
        return None
    return "/".join(str(v) for v in values)


def _listed(manifest: dict, field: str) -> dict[str, object] | None:
    """A manifest count field as {key: count} (nested mappings flattened to "outer/inner"); None if malformed."""
    listed = manifest.get(field)
    if not isinstance(listed, dict):
        return None
    if len(COUNTED[field][0]) == 1:
        return {str(k): v for k, v in listed.items()}
    if not all(isinstance(inner, dict) for inner in listed.values()):
        return None
    return {f"{k}/{g}": n for k, inner in listed.items() for g, n in inner.items()}


def _decodes(member: str, data: bytes) -> str | None:
    """None if the media decodes as the format its name says, else why not."""
    from pipeline.media import decode_image, pil_format, probe_video

    try:
        if member.endswith(".mp4"):
            import av

            info = probe_video(data)  # the container header first: a frame past max_pixels is not decoded
            if (info["width"] or 0) * (info["height"] or 0) > MAX_FRAME_PIXELS:
                return f"header says {info['width']}x{info['height']}, over {MAX_FRAME_PIXELS} pixels a frame; not decoded"
            with av.open(io.BytesIO(data)) as c:
                n = sum(1 for _ in c.decode(video=0))
            return None if n > 0 else "video has no frames"
        # decode_image refuses oversized images from the header alone, and other formats unopened
        fmt = pil_format(member.rsplit(".", 1)[-1])
        if fmt is None:
            return f"{member} is not an image member"
        decode_image(data, formats=(fmt,)).load()
        return None
    except Exception as err:
        return f"{type(err).__name__}: {err}"


def _read_tar(tar_path: Path, expected: list[str], modality: str) -> tuple[list[str], list[str], list[dict]]:
    """(problems, keys, json records) of a tar's samples in tar order, checked one at a time as they
    stream by. Raises what reading the tar raises (READ_ERRORS, OSError)."""
    where = str(tar_path)
    problems: list[str] = []
    keys: list[str] = []
    metas: list[dict] = []
    unkeyed: list[str] = []
    seen: set[str] = set()
    # Only the folder's own members are read (json always, for the counts); any other is named, never read.
    wanted = {"json", *expected} & SHARD_SUFFIXES
    for sample in stream_samples(tar_path, lambda key, suffix: suffix in wanted, lcase=False, unkeyed=unkeyed):
        if sample.key in seen:
            problems.append(f"{where}: sample {sample.key}: key seen before, after other samples (readers see two samples)")
        problems += [f"{where}: sample {sample.key}: {why}" for why in sample.refused.values()]
        problems += [f"{where}: sample {sample.key}: {why}; not read" for suffix in sample.skipped
                     if (why := unknown_member(sample.skipped[suffix], suffix))]
        problems += _check_sample(where, sample, expected, modality)
        keys.append(sample.key)
        seen.add(sample.key)
        metas.append(_meta(sample.members))
    problems += [f"{where}: member {name!r} has no key (no dot in its file name); readers skip it" for name in unkeyed]
    return problems, keys, metas


def _meta(members: dict[str, bytes]) -> dict:
    try:
        meta = load_json(members.get("json", b""))
    except InputError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _check_sample(where: str, sample: Sample[bytes], expected: list[str], modality: str) -> list[str]:
    key, members = sample.key, sample.members
    bad = []
    if not _KEY.match(key):
        bad.append(f"{where}: key {key!r} is not {ID_HEX} lowercase hex")
    present = sorted([*members, *sample.refused, *sample.skipped])  # refused: too large to read; skipped: not the folder's
    if present != sorted(expected):
        bad.append(f"{where}: sample {key}: members {present}, expected {sorted(expected)}")
    try:
        meta = load_json(members.get("json", b""))
    except InputError as err:
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
    """The sidecar's pair_id and counted columns as lists, or why they cannot be read (its footer is
    checked first: a row group decompressing past the cap is not read)."""
    columns = list(dict.fromkeys(["pair_id", *(col for cols, _ in COUNTED.values() for col in cols)]))
    try:
        problem = row_group_problem(pq.ParquetFile(path).metadata)
        if problem:
            return None, problem
        table = pq.read_table(path, columns=columns)
    except Exception as err:
        return None, f"{type(err).__name__}: {err}"
    return {name: table.column(name).to_pylist() for name in columns}, None


def _check_sidecar_rows(side_path: Path, tar_name: str, side: dict[str, list], metas: list[dict]) -> list[str]:
    """Row by row, the sidecar's counted columns against the samples' json (same order)."""
    bad = []
    for cols, from_json in COUNTED.values():
        if len(cols) != 1:  # made of columns checked on their own
            continue
        col = cols[0]
        for i, (pid, got, meta) in enumerate(zip(side["pair_id"], side[col], metas)):
            want = from_json(meta)[0]
            if _count_key((got,)) != _count_key((want,)):
                bad.append(f"{side_path}: row {i} ({pid}): {col} {got!r} but {tar_name}'s json says {want!r}")
    return bad


def _compare_counts(manifest_path: Path, manifest: dict, shards: dict[str, Counter], sidecars: dict[str, Counter] | None) -> list[str]:
    """The manifest's count fields against what the shards' json and (when all were read) the sidecars hold."""
    bad = []
    for field in COUNTED:
        if field in OPTIONAL and field not in manifest:
            continue
        listed = _listed(manifest, field)
        if listed is None:
            bad.append(f"{manifest_path}: {field}: missing or not a mapping of counts")
            continue
        held = shards[field]
        side = sidecars[field] if sidecars is not None else None
        for key in sorted({*listed, *held, *(side or {})}):
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
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        return None, [f"{path}: {path.stat().st_size} bytes, over the {MAX_MANIFEST_BYTES}-byte limit; not read"]
    try:
        with open(path, "rb") as f:
            manifest = load_json(f.read(MAX_MANIFEST_BYTES + 1))
    except InputError as err:
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


def _check_folder(folder: Path, modality: str) -> tuple[list[str], dict[str, Counter]]:
    """Problems of one shard folder, and its counts per COUNTED field (from the samples' json)."""
    where = str(folder)
    manifest_path = folder / MANIFEST_NAME
    held = {field: Counter() for field in (*COUNTED, SEEN)}
    manifest, problems = _load_manifest(folder)
    if manifest is None:
        return problems, held
    expected = list(manifest.get("members", []))
    listed = {s["name"] for s in manifest["shards"]}
    for stray in sorted(p.name for p in folder.glob("*.tar") if p.name not in listed):
        problems.append(f"{folder / stray}: not listed in {MANIFEST_NAME}")
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
        if file_sha256(tar_path) != shard.get("sha256"):
            problems.append(f"{tar_path}: sha256 differs from {MANIFEST_NAME}")
        try:
            found, keys, metas = _read_tar(tar_path, expected, modality)
        except (*READ_ERRORS, OSError) as err:
            problems.append(f"{tar_path}: unreadable tar ({err})")
            complete, side_counts = False, None
            continue
        problems += found
        for meta in metas:
            for field, (_, from_json) in COUNTED.items():
                value = _count_key(from_json(meta))
                if value is not None:
                    held[field][value] += 1
            cat = meta.get("category")
            order.append(cat if isinstance(cat, str) else None)
            for side in ("winner", "loser"):
                rec = meta.get(side)
                value = _count_key((cat, rec.get("generator") if isinstance(rec, dict) else None))
                if value is not None:
                    held[SEEN][value] += 1
        total += len(keys)
        if len(keys) != shard.get("samples"):
            problems.append(f"{tar_path}: {len(keys)} samples, {MANIFEST_NAME} says {shard.get('samples')}")
        if side_path is None or not side_path.is_file():
            problems.append(f"{side_path or tar_path}: sidecar missing")
            side_counts = None
            continue
        if file_sha256(side_path) != shard.get("sidecar_sha256"):
            problems.append(f"{side_path}: sha256 differs from {MANIFEST_NAME}")
        side, why = _read_sidecar(side_path)
        if side is None:
            problems.append(f"{side_path}: unreadable sidecar ({why})")
            side_counts = None
            continue
        if side["pair_id"] != keys:
            problems.append(f"{side_path}: pair_ids differ from {tar_path.name}'s keys")
        else:
            problems += _check_sidecar_rows(side_path, tar_path.name, side, metas)
        if side_counts is not None:
            for field, (cols, _) in COUNTED.items():
                side_counts[field].update(k for k in map(_count_key, zip(*(side[c] for c in cols))) if k is not None)
    if total != manifest.get("num_samples"):
        problems.append(f"{manifest_path}: num_samples {manifest.get('num_samples')} but the shards hold {total}")
    problems += _compare_counts(manifest_path, manifest, held, side_counts)
    if complete:
        problems += prefix_problems(where, order)
    return problems, held


def verify_folder(folder: Path, modality: str) -> list[str]:
    return _check_folder(folder, modality)[0]


def _layout(root: Path) -> tuple[list[Path], Path]:
    """The shard folders under `root` (a build folder or its shards/ folder) and where config.yaml would be."""
    shards = root / "shards" if (root / "shards").is_dir() else root
    build = root if shards != root else root.parent
    folders = [p for p in sorted(shards.iterdir()) if p.is_dir() and p.name in ("image", "video")] if shards.is_dir() else []
    return folders, build / CONFIG_NAME


def _read_config(config_path: Path) -> tuple[dict | None, list[str]]:
    """The build's config.yaml as plain data (None when absent or unreadable), and problems reading it."""
    if not config_path.is_file():
        return None, []
    if config_path.stat().st_size > MAX_CONFIG_BYTES:
        return None, [f"{config_path}: over {MAX_CONFIG_BYTES} bytes; not a build config"]
    import yaml

    try:
        data = yaml.safe_load(config_path.read_text())  # plain data only: no tags, no objects
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        return None, [f"{config_path}: does not parse ({err})"]
    except RecursionError:
        return None, [f"{config_path}: does not parse (nested deeper than the YAML parser allows)"]
    return (data if isinstance(data, dict) else {}), []


def _quotas(config_path: Path, data: dict) -> tuple[dict[str, int], list[str]]:
    """category -> quota from the config, and problems with its `categories`."""
    categories = data.get("categories")
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


def _cap(config_path: Path, data: dict) -> tuple[float | None, list[str]]:
    """selection.max_winner_generator_share (None when the config has no such key, or sets it null)."""
    selection = data.get("selection")
    if selection is None:
        return None, []
    share = selection.get("max_winner_generator_share") if isinstance(selection, dict) else None
    if share is None:
        return None, [] if isinstance(selection, dict) else [f"{config_path}: selection: not a mapping"]
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
        return None, [f"{config_path}: selection: max_winner_generator_share: must be a number in (0, 1], got {share!r}"]
    return float(share), []


def cap_problems(config_path: Path, share: float, by_category: Counter, seen: Counter) -> list[str]:
    """Generators winning more than floor(s * n) of a category's n pairs, s = max(share, 1/k) with k the
    generators its pairs show (winners or losers). `by_category` counts winners, `seen` both sides, keyed
    "category/generator" (the json's, via `_check_folder`).

    The select stage raises the cap to 1/k for k generators *serving* the category (a single-generator
    category is not capped); the generators a category's pairs show are at most those, so this cap is
    never stricter than select's and a sound build never trips it."""
    totals, serving = Counter(), Counter()
    for key, n in by_category.items():
        totals[key.partition("/")[0]] += n
    for key in seen:
        serving[key.partition("/")[0]] += 1
    bad = []
    for key, won in sorted(by_category.items()):
        cat, _, gen = key.partition("/")
        k = max(serving[cat], 1)
        cat_share = max(share, 1.0 / k)
        allowed = math.floor(cat_share * totals[cat] + CAP_SLACK)
        if won > allowed:
            raised = f" (1/{k} for the {k} generators in its pairs)" if cat_share > share else ""
            bad.append(
                f"{config_path}: selection: max_winner_generator_share {share:g}{raised}: {gen} won {won} of the "
                f"{totals[cat]} {cat} pairs, at most {allowed} allowed"
            )
    return bad


def _balance(config_path: Path, counts: dict[str, Counter]) -> tuple[list[str], list[str]]:
    """(problems, warnings) of the selected counts against the config: quotas per category, generator cap."""
    data, problems = _read_config(config_path)
    if data is None:
        return problems, []
    quotas, quota_problems = _quotas(config_path, data)
    share, cap_bad = _cap(config_path, data)
    problems += quota_problems + cap_bad
    if share is not None:
        problems += cap_problems(config_path, share, counts["winner_generators_by_category"], counts.get(SEEN, Counter()))
    by_cat = counts["categories"]
    warnings = []
    for cat in sorted(set(by_cat) - set(quotas)):
        if not quota_problems:  # an unreadable quota already says why
            problems.append(f"{config_path}: categories: no {cat!r}, but the shards hold {by_cat[cat]} of its samples")
    for cat, quota in sorted(quotas.items()):
        n = by_cat.get(cat, 0)
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
    counts = {field: Counter() for field in (*COUNTED, SEEN)}
    for folder in folders:
        found, held = _check_folder(folder, folder.name)
        problems += found
        for field in counts:
            counts[field] += held[field]
    problems += _balance(config_path, counts)[0]
    return problems


def balance_report(root: str | Path) -> list[str]:
    """`warning:` lines that are not problems: categories selected below their quota in config.yaml.

    Counts come from the manifests (cheap; `verify_dataset` checks them against the shards)."""
    folders, config_path = _layout(Path(root))
    counts = {field: Counter() for field in COUNTED}
    for folder in folders:
        manifest, _ = _load_manifest(folder)
        for field in COUNTED:
            listed = _listed(manifest, field) if manifest else None
            counts[field].update({k: v for k, v in (listed or {}).items() if isinstance(v, int) and not isinstance(v, bool)})
    return _balance(config_path, counts)[1]
