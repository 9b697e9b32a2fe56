"""Tables on disk: each a folder of parquet parts, grown one unit at a time, compacted as it grows.

    <table>/part-<h>.parquet       compacted rows (about PART_ROWS each; what a plain parquet reader sees)
    <table>/_manifest/<h>.parquet  one row per unit of part-<h>: unit id, row offset, rows, stats
    <table>/_units/<id>.parquet    a finished unit not compacted yet (hidden from plain readers)

A unit's file, or its row in a manifest, is its done marker: resume reads manifests and file names,
never rows (O(units)). Every file lands by atomic rename, and compaction writes the new manifest
before its part and removes the sources after, so a table killed at any moment still resolves to
each finished unit exactly once. docs/architecture.md, "Tables and resume", has the layout.
"""
from __future__ import annotations

import functools
import json
import secrets
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.store import write_atomic
from schemas.ids import _digest
from schemas.units import Slice, UnitStats

PART_ROWS = 100_000  # rows per compacted part: a table of N rows has about N / PART_ROWS files
ROW_GROUP_ROWS = 4096  # small row groups: a unit's slice reads little beyond its own rows
_UNIT_META = b"vipo.unit"
MANIFEST = pa.schema([
    ("unit_id", pa.string()), ("offset", pa.int64()), ("rows", pa.int64()), ("cluster", pa.string()), ("stats", pa.string()),
])


@dataclass(frozen=True)
class UnitRecord:
    """Where a finished unit's rows are and what it reported."""

    id: str
    rows: int
    stats: str
    cluster: str | None
    path: str
    offset: int = 0

    @property
    def slice(self) -> Slice:
        return Slice(self.path, self.offset, self.offset + self.rows)

    @property
    def unit_stats(self) -> UnitStats:
        return UnitStats.from_json(self.stats)


@dataclass(frozen=True)
class Table:
    """One table of a build: a picklable handle (folder, schema), cheap to send to every worker.

    `cluster_by`: a column every unit holds one value of (e.g. category); compaction orders units by
    it, so a reader filtering on it touches few row groups.
    """

    folder: str
    schema: pa.Schema
    cluster_by: str | None = None

    @property
    def name(self) -> str:
        return Path(self.folder).name

    @property
    def _units(self) -> Path:
        return Path(self.folder) / "_units"

    @property
    def _manifests(self) -> Path:
        return Path(self.folder) / "_manifest"

    # -- writing (on workers) -------------------------------------------------------------------
    def write_unit(self, unit_id: str, rows: pa.Table, stats: UnitStats) -> UnitRecord:
        """A finished unit's rows, with its stats in the file's metadata: the unit's done marker."""
        rows = rows.select(self.schema.names).cast(self.schema)
        cluster = None
        if self.cluster_by and rows.num_rows:
            cluster = rows.column(self.cluster_by)[0].as_py()
        meta = {"id": unit_id, "rows": rows.num_rows, "stats": stats.to_json(), "cluster": cluster}
        rows = rows.replace_schema_metadata({_UNIT_META: json.dumps(meta).encode()})
        path = self._units / f"{unit_id}.parquet"
        write_atomic(path, lambda f: pq.write_table(rows, f, compression="zstd", row_group_size=ROW_GROUP_ROWS))
        return UnitRecord(unit_id, rows.num_rows, meta["stats"], cluster, str(path))

    def loose_record(self, unit_id: str) -> UnitRecord | None:
        """The unit's own file, when it is there and not yet compacted (one footer read)."""
        path = self._units / f"{unit_id}.parquet"
        try:
            return _loose_record(path)
        except (FileNotFoundError, pa.ArrowInvalid):
            return None

    # -- what is there --------------------------------------------------------------------------
    def records(self) -> dict[str, UnitRecord]:
        """Every finished unit, by id: manifests first, then loose unit files (footer reads only)."""
        out, _ = self._resolve()
        return out

    def _resolve(self) -> tuple[dict[str, UnitRecord], dict]:
        out: dict[str, UnitRecord] = {}
        state = {"manifests": [], "superseded": [], "covered": [], "loose": []}
        manifests = sorted(self._manifests.glob("*.parquet")) if self._manifests.exists() else []
        valid = []
        for m in manifests:
            part = Path(self.folder) / f"part-{m.stem}.parquet"
            if not part.exists():  # killed between manifest and part: the units are still loose files
                state["superseded"].append((m, None))
                continue
            meta = pq.read_schema(m).metadata or {}
            replaces = json.loads(meta.get(b"vipo.replaces", b"[]"))
            valid.append((m, part, replaces))
        replaced = {r for _, _, rep in valid for r in rep}
        for m, part, _ in valid:
            if m.stem in replaced:  # merged into a newer part whose sources were not yet removed
                state["superseded"].append((m, part))
                continue
            state["manifests"].append((m, part))
            t = pq.read_table(m, schema=MANIFEST)
            for uid, off, rows, cluster, stats in zip(*(t.column(c).to_pylist() for c in MANIFEST.names)):
                out[uid] = UnitRecord(uid, rows, stats, cluster, str(part), off)
        if self._units.exists():
            for f in sorted(self._units.glob("*.parquet")):
                if f.stem in out:
                    state["covered"].append(f)
                    continue
                out[f.stem] = _loose_record(f)
                state["loose"].append(f)
        return out, state

    def files(self, records: Iterable[UnitRecord] | None = None) -> list[str]:
        """The files holding `records` (default: every finished unit), each once."""
        recs = self.records().values() if records is None else records
        return sorted({r.path for r in recs})

    def num_rows(self) -> int:
        return sum(r.rows for r in self.records().values())

    def dataset(self, records: Iterable[UnitRecord] | None = None) -> ds.Dataset:
        return ds.dataset(self.files(records), schema=self.schema, format="parquet")

    def read(self, columns: list[str] | None = None, filter: ds.Expression | None = None,
             records: Iterable[UnitRecord] | None = None) -> pa.Table:
        """The table (or the rows of `records` only), projected and filtered."""
        if records is not None:
            recs = sorted(records, key=lambda r: (r.cluster or "", r.id))
            t = read_slices([r.slice for r in recs], columns) if recs else self.schema.empty_table().select(columns or self.schema.names)
            return t if filter is None else t.filter(filter)
        files = self.files()
        if not files:
            return self.schema.empty_table().select(columns or self.schema.names)
        return ds.dataset(files, schema=self.schema, format="parquet").to_table(columns=columns, filter=filter)

    def exists(self) -> bool:
        return bool(self.records())

    def clear(self) -> None:
        """Remove every row (a columnar stage rewriting its whole output)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- compaction ------------------------------------------------------------------------------
    def compact(self, keep: set[str] | None = None, part_rows: int = PART_ROWS) -> int:
        """Merge loose unit files (and small parts) into parts of about `part_rows` rows, units ordered
        by (cluster, id); with `keep`, units not in it are removed. Returns the parts written."""
        recs, state = self._resolve()
        for f in state["covered"]:
            f.unlink(missing_ok=True)
        for m, part in state["superseded"]:
            if part is not None:
                part.unlink(missing_ok=True)
            m.unlink(missing_ok=True)
        by_path: dict[str, list[UnitRecord]] = {}
        for r in recs.values():
            by_path.setdefault(r.path, []).append(r)
        stale, small = [], []
        for m, part in state["manifests"]:
            mine = by_path.get(str(part), [])
            if keep is not None and any(r.id not in keep for r in mine):
                stale.append((m, part))
            elif sum(r.rows for r in mine) < part_rows // 2:
                small.append((m, part))
        loose = []
        for f in state["loose"]:
            if keep is not None and f.stem not in keep:
                f.unlink(missing_ok=True)
            else:
                loose.append(str(f))
        if not loose and not stale and len(small) <= 1:
            return 0  # already compact: a rerun of a finished stage writes nothing
        redo = stale + small
        redo_parts = {str(p) for _, p in redo}
        moving = [r for r in recs.values() if (keep is None or r.id in keep) and (r.path in loose or r.path in redo_parts)]
        moving.sort(key=lambda r: (r.cluster or "", r.id))
        groups, current, size = [], [], 0
        for r in moving:
            if current and size + r.rows > part_rows:
                groups.append(current)
                current, size = [], 0
            current.append(r)
            size += r.rows
        if current:
            groups.append(current)
        replaced = [m.stem for m, _ in redo]
        for group in groups:
            self._write_part(group, replaced)
        for m, part in redo:  # part first, then manifest: a manifest without its part is ignored
            part.unlink(missing_ok=True)
            m.unlink(missing_ok=True)
        for f in loose:
            Path(f).unlink(missing_ok=True)
        return len(groups)

    def _write_part(self, group: list[UnitRecord], replaces: list[str]) -> None:
        name = _digest(*(r.id for r in group), secrets.token_hex(4))
        tables, offsets, off = [], [], 0
        for r in group:
            tables.append(read_slices([r.slice]).cast(self.schema))
            offsets.append(off)
            off += r.rows
        rows = pa.concat_tables(tables) if tables else self.schema.empty_table()
        manifest = pa.table(
            {"unit_id": [r.id for r in group], "offset": offsets, "rows": [r.rows for r in group],
             "cluster": [r.cluster for r in group], "stats": [r.stats for r in group]},
            schema=MANIFEST,
        ).replace_schema_metadata({b"vipo.replaces": json.dumps(replaces).encode()})
        write_atomic(self._manifests / f"{name}.parquet", lambda f: pq.write_table(manifest, f))
        write_atomic(Path(self.folder) / f"part-{name}.parquet",
                     lambda f: pq.write_table(rows, f, compression="zstd", row_group_size=ROW_GROUP_ROWS))


def _loose_record(path: Path) -> UnitRecord:
    md = pq.read_metadata(path)
    meta = json.loads((md.metadata or {}).get(_UNIT_META, b"{}"))
    return UnitRecord(path.stem, md.num_rows, meta.get("stats", ""), meta.get("cluster"), str(path))


@functools.lru_cache(maxsize=64)
def _parquet(path: str, mtime_ns: int) -> pq.ParquetFile:
    return pq.ParquetFile(path)


def read_slices(slices: Iterable[Slice], columns: list[str] | None = None) -> pa.Table:
    """The rows of `slices`, in order, reading only the row groups that hold them."""
    tables = []
    for s in slices:
        pf = _parquet(s.path, Path(s.path).stat().st_mtime_ns)
        md, start, groups, first = pf.metadata, 0, [], None
        for i in range(md.num_row_groups):
            n = md.row_group(i).num_rows
            if start + n > s.start and start < s.stop:
                groups.append(i)
                first = start if first is None else first
            start += n
        if not groups:
            tables.append(pf.schema_arrow.empty_table().select(columns or pf.schema_arrow.names))
            continue
        t = pf.read_row_groups(groups, columns=columns)
        tables.append(t.slice(s.start - first, s.rows))
    tables = [t.replace_schema_metadata(None) for t in tables]
    return pa.concat_tables(tables) if len(tables) != 1 else tables[0]


class Catalogue:
    """The tables of one build folder, each opened once by name."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._tables: dict[str, Table] = {}

    def table(self, name: str, schema: pa.Schema | None = None, cluster_by: str | None = None) -> Table:
        """The table `name` (a folder under the root); its schema is given once, where it is made."""
        if name not in self._tables:
            if schema is None:
                raise KeyError(f"table {name!r} is not declared")
            self._tables[name] = Table(str(self.root / name), schema, cluster_by)
        return self._tables[name]
