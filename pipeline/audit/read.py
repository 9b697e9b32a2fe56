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
"""
from __future__ import annotations

import csv
import hashlib
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.pickapic import CAPTION, IMAGE_COLUMNS, MODEL_COLUMNS, REQUIRED_COLUMNS

PAIR_FILE_TYPES = (".jsonl", ".csv")
PAIR_UNIT_ROWS = 256  # rows per unit of a jsonl/csv when unit_rows is not set
MAX_MEMBER_BYTES = 1 << 29  # a shard member larger than this is not read (the row becomes corrupt_image)
_FOOTER_BYTES = 1 << 16
# Buffered, non-pre-buffered reads: pyarrow still decodes a row group's column chunk whole, but
# this cuts the peak of reading a 200 MB row group from ~690 MB to ~500 MB RSS (measured).
_READ_OPTIONS = {"pre_buffer": False, "buffer_size": 8 << 20}


class AuditInputError(ValueError):
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


def _parquet_file(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise AuditInputError(f"{path}: not a readable parquet file ({err})") from None


def _check_pickapic(path: Path) -> None:
    names = set(_parquet_file(path).schema_arrow.names)
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise AuditInputError(f"{path}: missing column(s) {missing}; a Pick-a-Pic file needs {list(REQUIRED_COLUMNS)}")


def _shard_sources(folder: Path) -> list[Source]:
    out = []
    for tar in sorted(folder.rglob("*.tar")):
        side = tar.with_suffix(".parquet")
        if not side.is_file():
            raise AuditInputError(f"{tar}: no sidecar {side.name} beside the shard (see docs/dataset_format.md)")
        names = set(_parquet_file(side).schema_arrow.names)
        if not {"pair_id", "prompt"} <= names:
            raise AuditInputError(f"{side}: not a vipo shard sidecar (needs pair_id and prompt columns)")
        out.append(Source("shards", str(side), _fingerprint(tar), str(tar)))
    return out


def discover(data: str | Path) -> list[Source]:
    """The input files of `data`, in a stable order; raises AuditInputError naming the bad file."""
    data = Path(data)
    if not data.exists():
        raise AuditInputError(f"{data}: no such file or folder")
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
def read_pair_file(path: str | Path) -> list[dict[str, Any]]:
    """The records of a jsonl/csv pair file; a line that is not a JSON object is a one-line error."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return [dict(r) for r in csv.DictReader(f)]
    records = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise AuditInputError(f"{path}: line {i}: not valid JSON ({err.msg})") from None
            if not isinstance(rec, dict):
                raise AuditInputError(f"{path}: line {i}: expected a JSON object, got {type(rec).__name__}")
            records.append(rec)
    return records


def _pair_row(rec: dict[str, Any], row: int, base: Path) -> dict[str, Any]:
    def path_of(col: str) -> str | None:
        value = rec.get(col)
        return None if value in (None, "") else str(base / str(value))

    label = rec.get("label_0", rec.get("label"))
    return {
        "row": row,
        "caption": rec.get("prompt", rec.get(CAPTION)) or None,  # csv has no null: an empty cell is missing
        "path_0": path_of("image_0"),
        "path_1": path_of("image_1"),
        "label_0": None if label in (None, "") else label,
        "model_0": rec.get("model_0"),
        "model_1": rec.get("model_1"),
    }


# -- planning ----------------------------------------------------------------------------------------
def plan_units(sources: list[Source], unit_rows: int | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Work units (one task dict each): a slice of at most `unit_rows` rows inside one parquet row
    group (None: the whole row group, which pyarrow decodes whole anyway, so each is read once), or
    of a pair file (None: PAIR_UNIT_ROWS). `limit` keeps the first N rows of the input, in file order."""
    units: list[dict[str, Any]] = []
    left = limit if limit is not None else float("inf")
    for index, src in enumerate(sources):
        if left <= 0:
            break
        if src.kind == "pairs":
            base = Path(src.path).parent
            records = read_pair_file(src.path)
            size = unit_rows or PAIR_UNIT_ROWS
            for start in range(0, len(records), size):
                stop = int(min(start + size, len(records), start + left))
                if stop <= start:
                    break
                rows = [_pair_row(records[r], r, base) for r in range(start, stop)]
                units.append({"id": f"{src.key}:{start}:{stop}", "kind": "pairs", "source": index, "key": src.key,
                              "start": start, "stop": stop, "rows": rows})
                left -= stop - start
            continue
        meta = _parquet_file(Path(src.path)).metadata
        offset = 0
        for rg in range(meta.num_row_groups):
            n = meta.row_group(rg).num_rows
            size = unit_rows or max(n, 1)
            for s in range(0, n, size):
                e = int(min(s + size, n, s + left))
                if e <= s:
                    break
                units.append({"id": f"{src.key}:{offset + s}:{offset + e}", "kind": src.kind, "source": index,
                              "key": src.key, "path": src.path, "tar": src.tar, "row_group": rg,
                              "start": offset + s, "stop": offset + e, "rg_offset": offset})
                left -= e - s
            offset += n
            if left <= 0:
                break
    return units


# -- reading one unit (on the actor) -----------------------------------------------------------------
def _parquet_slice(path: str, row_group: int, rg_offset: int, start: int, stop: int, columns: list[str],
                   batch_size: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(first row index, batch) over rows [start, stop) of one row group, streamed."""
    pf = pq.ParquetFile(path, **_READ_OPTIONS)
    at = rg_offset
    for batch in pf.iter_batches(batch_size=batch_size, row_groups=[row_group], columns=columns, use_threads=False):
        lo, hi = max(start, at), min(stop, at + batch.num_rows)
        if hi > lo:
            yield lo, batch.slice(lo - at, hi - lo)
        at += batch.num_rows
        if at >= stop:
            break


def _read_optional(path: str) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except OSError:
        return None


def iter_unit(unit: dict[str, Any], batch_size: int) -> Iterator[list[dict[str, Any]]]:
    """Raw, unvalidated rows of a unit in batches: row, caption, img_0, img_1 (bytes or None),
    label_0, model_0, model_1. Validation is the caller's (a bad row is a counted skip)."""
    kind = unit["kind"]
    if kind == "pairs":
        rows = unit["rows"]
        for i in range(0, len(rows), batch_size):
            out = []
            for r in rows[i : i + batch_size]:
                img = [None if p is None else _read_optional(p) for p in (r["path_0"], r["path_1"])]
                missing = [p for p, b in zip((r["path_0"], r["path_1"]), img) if p is not None and b is None]
                out.append({**r, "img_0": img[0], "img_1": img[1],
                            "error": f"cannot read {missing[0]}" if missing else None})
            yield out
        return
    if kind == "pickapic":
        names = set(pq.ParquetFile(unit["path"]).schema_arrow.names)
        cols = [*REQUIRED_COLUMNS, *(c for c in MODEL_COLUMNS if c in names)]
        for first, batch in _parquet_slice(unit["path"], unit["row_group"], unit["rg_offset"], unit["start"],
                                           unit["stop"], cols, batch_size):
            d = batch.to_pydict()
            yield [{"row": first + i, "caption": d[CAPTION][i], "img_0": d[IMAGE_COLUMNS[0]][i],
                    "img_1": d[IMAGE_COLUMNS[1]][i], "label_0": d["label_0"][i],
                    "model_0": d.get(MODEL_COLUMNS[0], [None] * batch.num_rows)[i],
                    "model_1": d.get(MODEL_COLUMNS[1], [None] * batch.num_rows)[i]} for i in range(batch.num_rows)]
        return
    yield from _iter_shard_unit(unit, batch_size)


def _iter_shard_unit(unit: dict[str, Any], batch_size: int) -> Iterator[list[dict[str, Any]]]:
    """Rows of a shard slice: the sidecar gives ids, prompts and generators; the tar, read as a
    stream (a sample's members are contiguous), gives the media, a batch at a time."""
    cols = ["pair_id", "prompt"]
    names = set(pq.ParquetFile(unit["path"]).schema_arrow.names)
    cols += [c for c in ("winner_generator", "loser_generator") if c in names]
    wanted: dict[str, dict[str, Any]] = {}
    for first, batch in _parquet_slice(unit["path"], unit["row_group"], unit["rg_offset"], unit["start"],
                                       unit["stop"], cols, 1 << 16):
        wanted.update((r["pair_id"], {"row": first + i, **r}) for i, r in enumerate(batch.to_pylist()))

    def row(key: str, files: dict[str, bytes], error: str | None) -> dict[str, Any]:
        r = wanted.pop(key)
        pick = lambda side: next((v for k, v in files.items() if k.startswith(f"{side}.")), None)
        return {"row": r["row"], "caption": r["prompt"], "img_0": pick("win"), "img_1": pick("lose"), "label_0": 1.0,
                "model_0": r.get("winner_generator"), "model_1": r.get("loser_generator"), "error": error,
                "video": any(k.endswith(".mp4") for k in files)}

    out: list[dict[str, Any]] = []
    key, files, error = None, {}, None
    with tarfile.open(unit["tar"], mode="r|") as tar:  # a stream: members are read as bytes, never extracted
        for member in tar:
            k, _, suffix = member.name.rpartition("/")[2].partition(".")
            if k != key:
                if key in wanted:
                    out.append(row(key, files, error))
                key, files, error = k, {}, None
                if len(out) >= batch_size:
                    yield out
                    out = []
            if k not in wanted or not member.isfile() or suffix.split(".")[0] not in ("win", "lose"):
                continue
            if member.size > MAX_MEMBER_BYTES:
                error = f"{member.name} is {member.size} bytes, over the {MAX_MEMBER_BYTES}-byte limit"
                continue
            files[suffix] = tar.extractfile(member).read()
    if key in wanted:
        out.append(row(key, files, error))
    out += [row(k, {}, None) for k in sorted(wanted, key=lambda k: wanted[k]["row"])]  # in the sidecar, not the tar
    for i in range(0, len(out), batch_size):
        yield out[i : i + batch_size]


# -- reading input rows back (exports, report examples) ----------------------------------------------
def row_tables(src: Source, rows: list[int] | None = None, batch_rows: int = 256) -> Iterator[tuple[int, pa.Table]]:
    """(first row index, table of the input's own columns) over the parts of `src` that hold any of
    `rows` (all when None), at most `batch_rows` rows at a time, skipping row groups that hold none
    of them: an export streams (a Pick-a-Pic row group can hold a gigabyte of images)."""
    if src.kind == "pairs":
        yield 0, pa.Table.from_pylist(read_pair_file(src.path))
        return
    pf = pq.ParquetFile(src.path, **_READ_OPTIONS)
    wanted = None if rows is None else sorted(rows)
    offset, j = 0, 0
    for rg in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(rg).num_rows
        if wanted is not None:
            while j < len(wanted) and wanted[j] < offset:
                j += 1
            if j >= len(wanted) or wanted[j] >= offset + n:
                offset += n
                continue
        at = offset
        for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[rg], use_threads=False):
            yield at, pa.Table.from_batches([batch])
            at += batch.num_rows
        offset += n


def read_rows(src: Source, index: int, rows: list[int]) -> dict[int, dict[str, Any]]:
    """Raw rows (images included) of a few row indices of `src`: the report's examples."""
    if src.kind == "pairs":
        records, base = read_pair_file(src.path), Path(src.path).parent
        units = [{"kind": "pairs", "rows": [_pair_row(records[r], r, base)]} for r in rows]
    else:
        meta = pq.ParquetFile(src.path).metadata
        starts = [0]
        for rg in range(meta.num_row_groups):
            starts.append(starts[-1] + meta.row_group(rg).num_rows)
        units = []
        for r in rows:
            rg = max(i for i in range(meta.num_row_groups) if starts[i] <= r)
            units.append({"kind": src.kind, "path": src.path, "tar": src.tar, "row_group": rg,
                          "rg_offset": starts[rg], "start": r, "stop": r + 1})
    out: dict[int, dict[str, Any]] = {}
    for unit in units:
        for batch in iter_unit({**unit, "source": index}, 1):
            out.update((r["row"], r) for r in batch)
    return out
