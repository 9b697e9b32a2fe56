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
"""
from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.formats.parquet import RowGroup, iter_slice, open_parquet, row_groups
from pipeline.formats.pickapic import comparison, missing_columns, read_columns
from pipeline.formats.shards import MAX_MEMBER_BYTES, Sample, stream_samples
from schemas.pickapic import CAPTION, REQUIRED_COLUMNS

PAIR_FILE_TYPES = (".jsonl", ".csv")
PAIR_UNIT_ROWS = 256  # rows per unit of a jsonl/csv when unit_rows is not set
# A shard member over MAX_MEMBER_BYTES (pipeline.formats.shards) is not read: its row becomes corrupt_image.
_FOOTER_BYTES = 1 << 16


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
    missing = missing_columns(_parquet_file(path).schema_arrow.names)
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
        pf = open_parquet(unit["path"])
        for first, batch in _unit_slice(unit, pf, read_columns(pf.schema_arrow.names), batch_size):
            rows = (comparison(batch, i, first + i) for i in range(batch.num_rows))
            yield [{"row": c.row, "caption": c.caption, "img_0": c.images[0], "img_1": c.images[1], "label_0": c.label_0,
                    "model_0": c.models[0], "model_1": c.models[1]} for c in rows]
        return
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
        pick = lambda side: next((v for k, v in files.items() if k.startswith(f"{side}.")), None)
        error = list(sample.refused.values())[-1] if sample.refused else None
        return {"row": r["row"], "caption": r["prompt"], "img_0": pick("win"), "img_1": pick("lose"), "label_0": 1.0,
                "model_0": r.get("winner_generator"), "model_1": r.get("loser_generator"), "error": error,
                "video": any(k.endswith(".mp4") for k in files)}

    def media(key: str, suffix: str) -> bool:  # only the two media of a pair of this unit are read
        return key in wanted and suffix.split(".")[0] in ("win", "lose")

    out: list[dict[str, Any]] = []
    for sample in stream_samples(unit["tar"], media, max_member_bytes=MAX_MEMBER_BYTES):
        if sample.key in wanted:
            out.append(row(sample))
        if len(out) >= batch_size:
            yield out
            out = []
    out += [row(Sample(k)) for k in sorted(wanted, key=lambda k: wanted[k]["row"])]  # in the sidecar, not the tar
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


def read_rows(src: Source, index: int, rows: list[int]) -> dict[int, dict[str, Any]]:
    """Raw rows (images included) of a few row indices of `src`: the report's examples."""
    if src.kind == "pairs":
        records, base = read_pair_file(src.path), Path(src.path).parent
        units = [{"kind": "pairs", "rows": [_pair_row(records[r], r, base)]} for r in rows]
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
