"""The audit's inputs: find the files, cut them into work units, and read one unit's rows.

Three kinds of input, all seen as "one row = one comparison" with a caption, two encoded images and
`label_0` (the Pick-a-Pic contract, `schemas/pickapic.py`):

* `pickapic`: Pick-a-Pic v2 parquet file(s) or a folder of them;
* `shards`:   a folder of our WebDataset shards (each tar read beside its sidecar parquet); the
  human label is the dataset's own: `win.*` is image 0 and preferred (`label_0 = 1`);
* `pairs`:    a jsonl/csv with `prompt` (or `caption`), `image_0`, `image_1` (paths relative to the
  file) and `label_0` (or `label`), optionally `model_0`/`model_1`.

The driver only reads parquet footers (or the small text of a jsonl/csv): a unit names a row range
of one file, and the actor reads that range itself, batch by batch, so no process ever holds more
than one batch of image bytes. Unit ids are fingerprints of the file's content plus the row range,
so a rerun plans the same units and skips the ones already scored.

Files are read through `pipeline.formats` (parquet row groups in bounded batches, tars as a stream
of samples by webdataset's key rule), the same code the trainer and `verify` read them with.

Everything is untrusted and bounded before it is read (`pipeline.formats.bounded`, docs/reliability.md):
input files must be regular files (a FIFO would block, a device never ends); a parquet row group
stating more than MAX_ROW_GROUP_BYTES decompressed is refused from the footer; a pair file is read
line by line (1 MiB a line, JSON at most 64 deep, csv fields within the csv module's limit); its image
paths must resolve inside the pair file's folder (unless `allow_outside`) to regular files of at most
MAX_MEDIA_BYTES; a shard's member names are checked from its tar headers before any is read.
"""
from __future__ import annotations

import csv
import hashlib
import json
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.audit.checks import check_row
from pipeline.formats.bounded import (
    MAX_CSV_FIELD,
    MAX_MEDIA_BYTES,
    InputError,
    TooLargeError,
    check_regular,
    file_kind,
    iter_lines,
    load_json,
    read_regular,
    resolve_inside,
)
from pipeline.formats.parquet import RowGroup, iter_slice, open_parquet, row_group_problem, row_groups
from pipeline.formats.pickapic import comparison, missing_columns, read_columns
from pipeline.formats.shards import READ_ERRORS, Sample, ShardError, ShardReadError, index_samples, stream_samples, unknown_member
from schemas.audit import SCORED
from schemas.errors import VipoError
from schemas.pickapic import CAPTION, REQUIRED_COLUMNS
from schemas.shard import IMAGE_EXTENSIONS, VIDEO_EXTENSION

PAIR_FILE_TYPES = (".jsonl", ".csv")
PAIR_UNIT_ROWS = 256  # rows per unit of a jsonl/csv when unit_rows is not set
#: The shard members a row is made of: win.<ext> is image (or video) 0, lose.<ext> image 1.
MEDIA_SUFFIXES = {side: tuple(f"{side}.{ext}" for ext in (*IMAGE_EXTENSIONS, VIDEO_EXTENSION)) for side in ("win", "lose")}
_FOOTER_BYTES = 1 << 16


class AuditInputError(VipoError, ValueError):
    """An input that cannot be audited at all, phrased as one line naming the file (and row)."""


@dataclass(frozen=True)
class Source:
    """One input file. `path` is the parquet (Pick-a-Pic file or shard sidecar) or the jsonl/csv."""

    kind: str  # "pickapic" | "shards" | "pairs"
    path: str
    key: str  # 16 hex: fingerprint of the file's content, prefix of its row ids
    tar: str | None = None  # shards: the tar beside the sidecar


def _fingerprint(path: Path) -> str:
    """Size + name + the last 64 KiB (a parquet footer holds every row group's statistics): cheap on
    a 320 GB folder, and a changed file gets new unit ids instead of stale results."""
    size = path.stat().st_size
    h = hashlib.sha256(f"{path.name}\x1f{size}\x1f".encode())
    with open(path, "rb") as f:
        f.seek(max(0, size - _FOOTER_BYTES))
        h.update(f.read())
    return h.hexdigest()[:16]


def _regular(path: Path) -> None:
    """Input files are regular files: pyarrow or open() on a FIFO would wait for a writer forever."""
    try:
        check_regular(path)
    except InputError as err:
        raise AuditInputError(f"{path}: {err}") from None


def _parquet_file(path: Path) -> pq.ParquetFile:
    """The file, footer read and checked: a row group decompressing past the cap is refused unread."""
    _regular(path)
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise AuditInputError(f"{path}: not a readable parquet file ({err})") from None
    problem = row_group_problem(pf.metadata)
    if problem:
        raise AuditInputError(f"{path}: {problem}")
    return pf


def _check_pickapic(path: Path) -> None:
    missing = missing_columns(_parquet_file(path).schema_arrow.names)
    if missing:
        raise AuditInputError(f"{path}: missing column(s) {missing}; a Pick-a-Pic file needs {list(REQUIRED_COLUMNS)}")


def check_shard_sample(sample: Sample) -> str | None:
    """Why a sample's member names refuse its shard (a member the format does not have), or None."""
    for suffix in (*sample.members, *sample.refused, *sample.skipped):
        name = sample.skipped.get(suffix, f"{sample.key}.{suffix}")
        why = unknown_member(name, suffix)
        if why:
            return why
    return None


def _scan_tar(tar: Path) -> None:
    """Refuse a shard whose member names break the format, from its tar headers alone (no member data
    is read: the tar is seeked through): a name with `..` or a leading `/`, a member with no key, a
    suffix twice in a sample, a member the format does not have (`.pickle`, a second `win.*`). A tar
    that breaks off is not refused here: its rows past the break are counted as missing."""
    unkeyed: list[str] = []
    try:
        with open(tar, "rb") as f:
            try:
                samples = list(index_samples(f, unkeyed=unkeyed))
            except tarfile.ReadError:  # not a plain tar: a compressed one is read as a stream
                samples = list(stream_samples(tar, lambda key, suffix: False, unkeyed=unkeyed))
    except ShardReadError:
        return
    except (*READ_ERRORS, OSError) as err:
        raise AuditInputError(f"{tar}: not a readable shard ({err})") from None
    if unkeyed:
        raise AuditInputError(f"{tar}: member {unkeyed[0]!r} has no key (no dot in its file name); "
                              "the shard is refused, nothing of it read")
    for sample in samples:
        why = check_shard_sample(sample)
        if why:
            raise AuditInputError(f"{tar}: sample {sample.key!r}: {why}; the shard is refused, nothing of it read")


def _shard_sources(folder: Path) -> list[Source]:
    out = []
    for tar in sorted(folder.rglob("*.tar")):
        _regular(tar)
        side = tar.with_suffix(".parquet")
        if not side.is_file():
            raise AuditInputError(f"{tar}: no sidecar {side.name} beside the shard (see docs/dataset_format.md)")
        names = set(_parquet_file(side).schema_arrow.names)
        if not {"pair_id", "prompt"} <= names:
            raise AuditInputError(f"{side}: not a vipo shard sidecar (needs pair_id and prompt columns)")
        _scan_tar(tar)
        out.append(Source("shards", str(side), _fingerprint(tar), str(tar)))
    return out


def discover(data: str | Path) -> list[Source]:
    """The input files of `data`, in a stable order; raises AuditInputError naming the bad file."""
    data = Path(data)
    if not data.exists():
        raise AuditInputError(f"{data}: no such file or folder")
    if not data.is_file() and not data.is_dir():
        raise AuditInputError(f"{data}: not a regular file or folder ({file_kind(data.stat().st_mode)})")
    if data.is_file():
        suffix = data.suffix.lower()
        if suffix == ".parquet":
            _check_pickapic(data)
            return [Source("pickapic", str(data.resolve()), _fingerprint(data))]
        if suffix in PAIR_FILE_TYPES:
            return [Source("pairs", str(data.resolve()), _fingerprint(data))]
        raise AuditInputError(f"{data}: expected a .parquet, .jsonl or .csv file or a folder")
    if any(data.rglob("*.tar")):
        return _shard_sources(data.resolve())
    files = sorted(data.rglob("*.parquet"))
    if not files:
        raise AuditInputError(f"{data}: no parquet files and no shards found")
    for f in files:
        _check_pickapic(f)
    return [Source("pickapic", str(f.resolve()), _fingerprint(f)) for f in files]


# -- pair files (jsonl / csv): small text, parsed on the driver --------------------------------------
def _csv_records(path: Path, lines: Iterable[str]) -> list[dict[str, Any]]:
    reader = csv.reader(lines)
    try:
        header = next(reader, None)
        if header is None:
            return []
        records = []
        for fields in reader:
            if len(fields) > len(header):
                raise AuditInputError(f"{path}: line {reader.line_num}: {len(fields)} fields, the header has {len(header)}")
            records.append(dict(zip(header, fields + [None] * (len(header) - len(fields)))))
        return records
    except csv.Error as err:
        if "field larger than field limit" in str(err):
            err = f"a field is longer than {MAX_CSV_FIELD} characters (the csv module's limit)"
        raise AuditInputError(f"{path}: line {reader.line_num}: {err}") from None


def read_pair_file(path: str | Path) -> list[dict[str, Any]]:
    """The records of a jsonl/csv pair file, read line by line within the caps of
    `pipeline.formats.bounded`; a line that is too long, not UTF-8, too deep or not a JSON object is a
    one-line error naming the file and line."""
    path = Path(path)
    _regular(path)
    try:
        with open(path, "rb") as f:
            if path.suffix.lower() == ".csv":
                return _csv_records(path, (text for _, text in iter_lines(f)))
            records = []
            for number, line in iter_lines(f):
                if not line.strip():
                    continue
                try:
                    rec = load_json(line)
                except InputError as err:
                    raise AuditInputError(f"{path}: line {number}: {err}") from None
                if not isinstance(rec, dict):
                    raise AuditInputError(f"{path}: line {number}: expected a JSON object, got {type(rec).__name__}")
                records.append(rec)
            return records
    except InputError as err:  # from iter_lines: the line is named in the message
        raise AuditInputError(f"{path}: {err}") from None


def _image_path(rec: dict[str, Any], col: str) -> tuple[str | None, str | None]:
    """(path as written, why it is unusable): csv has no null, so an empty cell is a missing path."""
    value = rec.get(col)
    if value in (None, ""):
        return None, None
    if not isinstance(value, str):
        return None, f"{col} is {type(value).__name__}, not a path"
    return value, None


def _pair_row(rec: dict[str, Any], row: int, root: Path, allow_outside: bool) -> dict[str, Any]:
    """A pair file's record as a raw audit row, checked here on the driver: its fields and label
    (`check_row`), then both image paths (inside `root` unless `allow_outside`, regular files, within
    the byte cap), by `stat` alone. A row that fails carries its status, so no actor ever opens it."""
    label = rec.get("label_0", rec.get("label"))
    caption = rec.get("prompt", rec.get(CAPTION))
    paths = [_image_path(rec, "image_0"), _image_path(rec, "image_1")]
    out = {
        "row": row,
        "caption": None if caption == "" else caption,
        "path_0": paths[0][0],
        "path_1": paths[1][0],
        "label_0": None if label == "" else label,
        "model_0": rec.get("model_0"),
        "model_1": rec.get("model_1"),
    }
    bad_path = next((why for _, why in paths if why), None)
    if bad_path:
        out["status"], out["detail"] = "missing_field", bad_path
        return out
    probe = {**out, "img_0": None if paths[0][0] is None else b"", "img_1": None if paths[1][0] is None else b""}
    status, detail = check_row(probe)
    if status == SCORED:
        for i in (0, 1):
            try:
                size = check_regular(resolve_inside(root, paths[i][0], allow_outside))
                if size > MAX_MEDIA_BYTES:
                    status, detail = "image_too_large", f"image {i}: {paths[i][0]} is {size} bytes, over the {MAX_MEDIA_BYTES}-byte limit"
            except InputError as err:
                status, detail = "corrupt_image", f"image {i}: {paths[i][0]}: {err}"
            except OSError as err:
                status, detail = "corrupt_image", f"image {i}: cannot read {paths[i][0]} ({err.strerror or err})"
            if status != SCORED:
                break
    if status != SCORED:
        out["status"], out["detail"] = status, detail
    return out


def _read_image(root: str, value: str, allow_outside: bool) -> bytes:
    """An image a pair file names, resolved and bounded again on the actor (the file may have changed)."""
    return read_regular(resolve_inside(root, value, allow_outside), MAX_MEDIA_BYTES)


# -- planning ----------------------------------------------------------------------------------------
def plan_units(sources: list[Source], unit_rows: int | None = None, limit: int | None = None,
               allow_outside: bool = False) -> list[dict[str, Any]]:
    """Work units (one task dict each): a slice of at most `unit_rows` rows inside one parquet row
    group (None: the whole row group, which pyarrow decodes whole anyway, so each is read once), or
    of a pair file (None: PAIR_UNIT_ROWS). `limit` keeps the first N rows of the input, in file order.
    `allow_outside`: a pair file's image paths may resolve outside its folder."""
    units: list[dict[str, Any]] = []
    left = limit if limit is not None else float("inf")
    for index, src in enumerate(sources):
        if left <= 0:
            break
        if src.kind == "pairs":
            base = Path(src.path).parent
            records = read_pair_file(src.path)
            pair = {"root": str(base), "allow_outside": allow_outside}
            size = unit_rows or PAIR_UNIT_ROWS
            for start in range(0, len(records), size):
                stop = int(min(start + size, len(records), start + left))
                if stop <= start:
                    break
                rows = [_pair_row(records[r], r, base, allow_outside) for r in range(start, stop)]
                units.append({"id": f"{src.key}:{start}:{stop}", "kind": "pairs", "source": index, "key": src.key,
                              "start": start, "stop": stop, "rows": rows, **pair})
                left -= stop - start
            continue
        for group in row_groups(_parquet_file(Path(src.path)).metadata):
            n, offset = group.rows, group.first
            size = unit_rows or max(n, 1)
            for s in range(0, n, size):
                e = int(min(s + size, n, s + left))
                if e <= s:
                    break
                units.append({"id": f"{src.key}:{offset + s}:{offset + e}", "kind": src.kind, "source": index,
                              "key": src.key, "path": src.path, "tar": src.tar, "row_group": group.index,
                              "start": offset + s, "stop": offset + e, "rg_offset": offset})
                left -= e - s
            if left <= 0:
                break
    return units


# -- reading one unit (on the actor) -----------------------------------------------------------------
def _unit_slice(unit: dict[str, Any], pf: pq.ParquetFile, columns: list[str], batch_size: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(first row index, batch) over the unit's rows of its row group, streamed."""
    return iter_slice(pf, unit["row_group"], unit["rg_offset"], unit["start"], unit["stop"], columns, batch_size)


def _media_bytes(row: dict[str, Any]) -> int:
    return sum(len(row.get(f"img_{i}") or b"") for i in (0, 1))


def _batches(rows: Iterable[dict[str, Any]], batch_size: int, budget: int = MAX_MEDIA_BYTES) -> Iterator[list[dict[str, Any]]]:
    """Rows in batches of `batch_size`, a batch closed early once its media reach `budget` bytes: a
    batch of rows whose images are each under the cap still never holds gigabytes."""
    out: list[dict[str, Any]] = []
    held = 0
    for row in rows:
        out.append(row)
        held += _media_bytes(row)
        if len(out) >= batch_size or held >= budget:
            yield out
            out, held = [], 0
    if out:
        yield out


def _pair_rows(unit: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A pair file's rows with their images read (rows the planner refused are not read at all)."""
    for r in unit["rows"]:
        img: list[bytes | None] = [None, None]
        error = reason = None
        if not r.get("status"):
            for i in (0, 1):
                if r[f"path_{i}"] is None:
                    continue
                try:
                    img[i] = _read_image(unit["root"], r[f"path_{i}"], unit.get("allow_outside", False))
                except InputError as err:
                    reason = "image_too_large" if isinstance(err, TooLargeError) else "corrupt_image"
                    error = f"image {i}: {r[f'path_{i}']}: {err}"
                except OSError as err:
                    reason, error = "corrupt_image", f"image {i}: cannot read {r[f'path_{i}']} ({err.strerror or err})"
                if error:
                    img = [None, None]
                    break
        yield {**r, "img_0": img[0], "img_1": img[1], "error": error, "error_reason": reason}


def _pickapic_batches(unit: dict[str, Any], batch_size: int) -> Iterator[list[dict[str, Any]]]:
    """The unit's rows, a parquet batch (cut at the unit's edges) at a time; an image cell over the cap
    is never converted (its row: image_too_large)."""
    pf = open_parquet(unit["path"])
    for first, batch in _unit_slice(unit, pf, read_columns(pf.schema_arrow.names), batch_size):
        rows = []
        for i in range(batch.num_rows):
            c = comparison(batch, i, first + i, max_image_bytes=MAX_MEDIA_BYTES)
            row = {"row": c.row, "caption": c.caption, "img_0": c.images[0], "img_1": c.images[1], "label_0": c.label_0,
                   "model_0": c.models[0], "model_1": c.models[1]}
            if c.refused:
                row.update(error=c.refused, error_reason="image_too_large")
            rows.append(row)
        yield from _batches(rows, batch_size)


def iter_unit(unit: dict[str, Any], batch_size: int) -> Iterator[list[dict[str, Any]]]:
    """Raw rows of a unit in batches (at most `batch_size` rows, MAX_MEDIA_BYTES of media): row,
    caption, img_0, img_1 (bytes or None), label_0, model_0, model_1, and `error` / `error_reason`
    for an image that was not read. Validation is the caller's (a bad row is a counted skip)."""
    kind = unit["kind"]
    if kind == "pairs":
        yield from _batches(_pair_rows(unit), batch_size)
    elif kind == "pickapic":
        yield from _pickapic_batches(unit, batch_size)
    else:
        yield from _iter_shard_unit(unit, batch_size)


def _iter_shard_unit(unit: dict[str, Any], batch_size: int) -> Iterator[list[dict[str, Any]]]:
    """Rows of a shard slice: the sidecar gives ids, prompts and generators; the tar, read as a
    stream (a sample's members are contiguous), gives the media, a batch at a time."""
    pf = open_parquet(unit["path"])
    cols = ["pair_id", "prompt"]
    cols += [c for c in ("winner_generator", "loser_generator") if c in pf.schema_arrow.names]
    wanted: dict[str, dict[str, Any]] = {}
    for first, batch in _unit_slice(unit, pf, cols, 1 << 16):
        wanted.update((r["pair_id"], {"row": first + i, **r}) for i, r in enumerate(batch.to_pylist()))

    def row(sample: Sample[bytes]) -> dict[str, Any]:
        r, files = wanted.pop(sample.key), sample.members
        pick = lambda side: next((files[s] for s in MEDIA_SUFFIXES[side] if s in files), None)
        error = list(sample.refused.values())[-1] if sample.refused else None
        return {"row": r["row"], "caption": r["prompt"], "img_0": pick("win"), "img_1": pick("lose"), "label_0": 1.0,
                "model_0": r.get("winner_generator"), "model_1": r.get("loser_generator"), "error": error,
                "error_reason": "image_too_large" if error else None,
                "video": any(k.endswith(f".{VIDEO_EXTENSION}") for k in (*files, *sample.refused))}

    def media(key: str, suffix: str) -> bool:  # only the two media of a pair of this unit are read
        return key in wanted and (suffix in MEDIA_SUFFIXES["win"] or suffix in MEDIA_SUFFIXES["lose"])

    def rows() -> Iterator[dict[str, Any]]:
        for sample in stream_samples(unit["tar"], media):
            why = check_shard_sample(sample)  # the planner checked the names; the tar may have changed since
            if why:
                raise ShardError(f"sample {sample.key!r}: {why}")
            if sample.key in wanted:
                yield row(sample)
        yield from (row(Sample(k)) for k in sorted(wanted, key=lambda k: wanted[k]["row"]))  # in the sidecar, not the tar

    yield from _batches(rows(), batch_size)


# -- reading input rows back (exports, report examples) ----------------------------------------------
def row_tables(src: Source, rows: list[int] | None = None, batch_rows: int = 256) -> Iterator[tuple[int, pa.Table]]:
    """(first row index, table of the input's own columns) over the parts of `src` that hold any of
    `rows` (all when None), at most `batch_rows` rows at a time, skipping row groups that hold none
    of them: an export streams (a Pick-a-Pic row group can hold a gigabyte of images)."""
    if src.kind == "pairs":
        yield 0, records_table(read_pair_file(src.path))
        return
    pf = open_parquet(src.path)
    wanted = None if rows is None else sorted(rows)
    j = 0
    for group in row_groups(pf.metadata):
        if wanted is not None:
            while j < len(wanted) and wanted[j] < group.first:
                j += 1
            if j >= len(wanted) or wanted[j] >= group.stop:
                continue
        for at, batch in iter_slice(pf, group.index, group.first, group.first, group.stop, None, batch_rows):
            yield at, pa.Table.from_batches([batch])


def records_table(records: list[dict[str, Any]]) -> pa.Table:
    """A pair file's records as a table, every key a column (first seen first). A column whose values
    pyarrow cannot hold in one type (a prompt that is text here and an object there, a list of mixed
    items, an integer past int64) is kept as text: strings as they are, anything else as its JSON."""
    names = list(dict.fromkeys(k for rec in records for k in rec))
    columns = {}
    for name in names:
        values = [rec.get(name) for rec in records]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            columns[name] = pa.array([v if v is None or isinstance(v, str) else json.dumps(v, sort_keys=True) for v in values],
                                     pa.string())
    return pa.table(columns) if names else pa.table({})


def read_rows(src: Source, index: int, rows: list[int], allow_outside: bool = False) -> dict[int, dict[str, Any]]:
    """Raw rows (images included) of a few row indices of `src`: the report's examples."""
    if src.kind == "pairs":
        records, base = read_pair_file(src.path), Path(src.path).parent
        units = [{"kind": "pairs", "root": str(base), "allow_outside": allow_outside,
                  "rows": [_pair_row(records[r], r, base, allow_outside)]} for r in rows]
    else:
        groups: list[RowGroup] = row_groups(pq.ParquetFile(src.path).metadata)
        units = []
        for r in rows:
            group = max((g for g in groups if g.first <= r), key=lambda g: g.index)
            units.append({"kind": src.kind, "path": src.path, "tar": src.tar, "row_group": group.index,
                          "rg_offset": group.first, "start": r, "stop": r + 1})
    out: dict[int, dict[str, Any]] = {}
    for unit in units:
        for batch in iter_unit({**unit, "source": index}, 1):
            out.update((r["row"], r) for r in batch)
    return out
