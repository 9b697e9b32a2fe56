"""Export the consistent and the conflicting pairs in the input's own schema.

Rows are copied from the input files (same columns, same types, same order), row group by row
group, through one `pq.ParquetWriter` per subset, so an export of a 320 GB folder needs the memory
of one row group. The files appear by atomic rename, like every table of the project.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.audit.read import AuditInputError, Source, row_tables
from pipeline.store import write_atomic


def _schema_of(sources: list[Source]) -> pa.Schema:
    """The one schema of all input files: Pick-a-Pic files share theirs; shard sidecars of two
    modalities may differ where a column is all null in one (promoted, e.g. null -> float)."""
    schemas = [next(row_tables(src))[1].schema if src.kind == "pairs" else pq.ParquetFile(src.path).schema_arrow
               for src in sources]
    if all(s.equals(schemas[0]) for s in schemas[1:]):
        return schemas[0]
    for src, schema in zip(sources, schemas):
        if schema.names != schemas[0].names:
            raise AuditInputError(f"{src.path}: columns {schema.names} differ from {sources[0].path}'s {schemas[0].names}; "
                                  "cannot export one table")
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        bad = next(src.path for src, s in zip(sources, schemas) if not s.equals(schemas[0]))
        raise AuditInputError(f"{bad}: columns/types differ from {sources[0].path}; cannot export one table ({err})") from None


def export_rows(sources: list[Source], rows: dict[int, np.ndarray], path: str | Path, schema: pa.Schema) -> int:
    """Write input rows `rows[source index]` (row indices within that file) to `path`; returns the count."""
    written = 0

    def write(f) -> None:
        nonlocal written
        with pq.ParquetWriter(f, schema, compression="zstd") as writer:
            for index, src in enumerate(sources):
                wanted = np.sort(np.asarray(rows.get(index, []), dtype=np.int64))
                if len(wanted) == 0:
                    continue
                for offset, table in row_tables(src, wanted.tolist()):
                    lo, hi = np.searchsorted(wanted, [offset, offset + table.num_rows])
                    if hi > lo:
                        part = table.take(pa.array(wanted[lo:hi] - offset))
                        writer.write_table(part.select(schema.names).cast(schema))
                        written += int(hi - lo)

    write_atomic(path, write)
    return written


def export_subsets(sources: list[Source], consistent: dict[int, np.ndarray], conflicting: dict[int, np.ndarray],
                   out: Path) -> dict[str, int]:
    """Write `out/consistent.parquet` and `out/conflicting.parquet`; returns their row counts."""
    schema = _schema_of(sources)
    return {
        "consistent": export_rows(sources, consistent, out / "consistent.parquet", schema),
        "conflicting": export_rows(sources, conflicting, out / "conflicting.parquet", schema),
    }
