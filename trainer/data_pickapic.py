"""Pairs from Pick-a-Pic v2 style parquet (`schemas.pickapic`), streamed one row group at a time.

The human label decides the orientation (`preferred_index(label_0)`: the preferred image is the
winner); ties are dropped (or refused, `drop_ties: false`); a row with a bad label or missing image
bytes is skipped with a warning naming file and row. Only the columns the trainer needs are read,
one row group at a time, so a 500 MB file never sits in memory whole. Row groups with no row for
this reader (rank / worker split, resume) are not read at all.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pyarrow.parquet as pq

from pipeline.media import decode_image, sha256_hex
from schemas.ids import ID_HEX, pair_id
from schemas.pickapic import (
    CAPTION,
    IMAGE_COLUMNS,
    LABEL_COLUMNS,
    REQUIRED_COLUMNS,
    preferred_index,
)
from schemas.train_data import PICKAPIC_CATEGORY, TrainDataConfig
from trainer.data_stream import Record, Skipped


def _bytes(value) -> bytes | None:
    """Image cell as bytes: plain binary, or the {bytes, path} struct of a datasets Image column."""
    if isinstance(value, dict):
        value = value.get("bytes")
    return value if isinstance(value, bytes) and value else None


class PickapicSource:
    """Pick-a-Pic v2 parquet files; the pair id is `pair_id(sha(winner bytes), sha(loser bytes))`."""

    def __init__(self, files: list[str], cfg: TrainDataConfig):
        self.files, self.cfg = files, cfg
        for path in files:
            names = set(pq.read_schema(path).names)
            missing = [c for c in REQUIRED_COLUMNS if c not in names]
            if missing:
                raise ValueError(f"{path}: not Pick-a-Pic v2 parquet, missing columns {missing}")

    def _row_groups(self, pf: pq.ParquetFile) -> Iterator[tuple[int, int, int]]:
        """(row group, first row, rows) of a file."""
        first = 0
        for rg in range(pf.num_row_groups):
            n = pf.metadata.row_group(rg).num_rows
            yield rg, first, n
            first += n

    def scan(self, file: int, start: int, keep: Callable[[int], bool]) -> Iterator[tuple[int, Record | Skipped | None]]:
        path = self.files[file]
        pf = pq.ParquetFile(path)
        for rg, first, n in self._row_groups(pf):
            rows = range(max(start, first), first + n)
            if not rows:
                continue
            if not any(keep(i) for i in rows):
                for i in rows:
                    yield i, None
                continue
            table = pf.read_row_group(rg, columns=[CAPTION, *IMAGE_COLUMNS, LABEL_COLUMNS[0]])
            for i in rows:
                yield i, (self._record(file, i, table, i - first) if keep(i) else None)

    def _record(self, file: int, row: int, table, k: int) -> Record | Skipped:
        where = f"{self.files[file]}:{row}"
        label = table.column(LABEL_COLUMNS[0])[k].as_py()
        try:
            winner = preferred_index(label)
        except (TypeError, ValueError) as err:
            return Skipped("malformed", f"{where}: skipped, {err}")
        if winner is None:
            if self.cfg.drop_ties:
                return Skipped("ties")
            raise ValueError(f"{where}: tie (label_0 = 0.5) and drop_ties is false")
        caption = table.column(CAPTION)[k].as_py()
        if not isinstance(caption, str):
            return Skipped("malformed", f"{where}: skipped, caption is {type(caption).__name__}, not text")
        cols = [IMAGE_COLUMNS[winner], IMAGE_COLUMNS[1 - winner]]
        blobs = [_bytes(table.column(c)[k].as_py()) for c in cols]
        for col, blob in zip(cols, blobs):
            if blob is None:
                return Skipped("malformed", f"{where}: skipped, {col} holds no image bytes")
        key = pair_id(*(sha256_hex(b)[:ID_HEX] for b in blobs))
        return Record(file, row, key, PICKAPIC_CATEGORY, caption, cols, payload=blobs)

    def fetch(self, records: list[Record]) -> None:
        """Re-read the image bytes of restored buffer records, one row group read per group needed."""
        by_file: dict[int, list[Record]] = {}
        for r in records:
            by_file.setdefault(r.file, []).append(r)
        for file, recs in by_file.items():
            pf = pq.ParquetFile(self.files[file])
            groups = list(self._row_groups(pf))
            for rg, first, n in groups:
                inside = [r for r in recs if first <= r.index < first + n]
                if not inside:
                    continue
                table = pf.read_row_group(rg, columns=list(IMAGE_COLUMNS))
                for r in inside:
                    r.payload = [_bytes(table.column(c)[r.index - first].as_py()) for c in r.media]

    def where(self, record: Record) -> str:
        return f"{self.files[record.file]}:{record.index}"

    def load_pair(self, record: Record) -> tuple[np.ndarray, np.ndarray]:
        out = []
        for col, blob in zip(record.media, record.payload):
            try:
                out.append(np.asarray(decode_image(blob, self.cfg.max_pixels)))
            except ValueError as err:
                raise ValueError(f"{col}: {err}") from None
            except Exception as err:  # noqa: BLE001 - PIL raises many types for corrupt data
                raise ValueError(f"{col} does not decode: {type(err).__name__}: {err}") from None
        return out[0], out[1]
