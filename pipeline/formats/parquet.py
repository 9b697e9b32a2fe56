"""Parquet read one row group at a time, in bounded batches (Pick-a-Pic files, shard sidecars).

A Pick-a-Pic v2 row group holds hundreds of MB of image bytes. pyarrow decodes a row group's column
chunk whole whatever the batch size, but buffered, non-pre-buffered reads cut the peak of reading a
200 MB row group from ~690 MB to ~500 MB RSS (measured), and batches keep the Python side small. A
caller names the rows it needs, so row groups without any are never read.

Since a read costs a row group's decompressed size, the footer is checked before any page is read:
a row group stating more than `MAX_ROW_GROUP_BYTES` is refused (`row_group_problem`; a zstd page of
zeros makes gigabytes from kilobytes).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.formats.bounded import MAX_ROW_GROUP_BYTES

READ_OPTIONS = {"pre_buffer": False, "buffer_size": 8 << 20}


@dataclass(frozen=True)
class RowGroup:
    """A row group and the file rows it holds: [first, first + rows)."""

    index: int
    first: int
    rows: int

    @property
    def stop(self) -> int:
        return self.first + self.rows


def open_parquet(path: str | Path) -> pq.ParquetFile:
    """A parquet file opened for the streamed, low-peak reads above."""
    return pq.ParquetFile(path, **READ_OPTIONS)


def row_groups(meta: pq.FileMetaData) -> list[RowGroup]:
    """Every row group of a file (from its footer alone), in file order."""
    out, first = [], 0
    for index in range(meta.num_row_groups):
        n = meta.row_group(index).num_rows
        out.append(RowGroup(index, first, n))
        first += n
    return out


def row_group_problem(meta: pq.FileMetaData, limit: int = MAX_ROW_GROUP_BYTES) -> str | None:
    """Why a file's row groups may not be read (from the footer alone): one decompressing past `limit`
    bytes, its largest column named; None when all fit."""
    for index in range(meta.num_row_groups):
        group = meta.row_group(index)
        if group.total_byte_size > limit:
            sizes = [(group.column(c).total_uncompressed_size, group.column(c).path_in_schema) for c in range(group.num_columns)]
            size, name = max(sizes, key=lambda s: s[0]) if sizes else (0, "?")  # the first of the largest
            return (f"row group {index} decompresses to {group.total_byte_size} bytes ({name}: {size}), "
                    f"over the {limit}-byte limit (parquet footer); nothing of it was read")
    return None


def iter_slice(pf: pq.ParquetFile, row_group: int, first: int, start: int, stop: int,
               columns: Sequence[str] | None, batch_size: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(file row of the batch's first row, batch) over rows [start, stop) of one row group whose first
    row is `first`, at most `batch_size` rows at a time; `columns` None reads them all."""
    at = first
    cols = None if columns is None else list(columns)
    for batch in pf.iter_batches(batch_size=batch_size, row_groups=[row_group], columns=cols, use_threads=False):
        lo, hi = max(start, at), min(stop, at + batch.num_rows)
        if hi > lo:
            yield lo, batch.slice(lo - at, hi - lo)
        at += batch.num_rows
        if at >= stop:
            break
