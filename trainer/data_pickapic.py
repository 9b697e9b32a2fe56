"""Pairs from Pick-a-Pic v2 style parquet (`schemas.pickapic`), streamed one row group at a time.

The human label decides the orientation (`preferred_index(label_0)`: the preferred image is the
winner); ties are dropped (or refused, `drop_ties: false`); a row with a bad label or missing image
bytes is skipped with a warning naming file and row. Rows are read through `pipeline.formats` (the
audit's reader): only the columns the trainer needs, one row group at a time in bounded batches, so
a 500 MB file never sits in memory whole, and only the rows this reader keeps are turned into
Python objects. Row groups with no row for this reader (rank / worker split, resume) are not read.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from pipeline.formats.parquet import iter_slice, open_parquet, row_groups
from pipeline.formats.pickapic import Comparison, comparison, image_bytes, missing_columns, read_columns
from pipeline.media import decode_image, sha256_hex
from schemas.ids import ID_HEX, pair_id
from schemas.pickapic import IMAGE_COLUMNS, preferred_index
from schemas.train_data import PICKAPIC_CATEGORY, TrainDataConfig
from trainer.data_stream import Record, Skipped

BATCH_ROWS = 256  # rows turned into a batch at a time (pyarrow decodes the row group's chunks whole anyway)


class PickapicSource:
    """Pick-a-Pic v2 parquet files; the pair id is `pair_id(sha(winner bytes), sha(loser bytes))`."""

    def __init__(self, files: list[str], cfg: TrainDataConfig):
        self.files, self.cfg = files, cfg
        for path in files:
            missing = missing_columns(open_parquet(path).schema_arrow.names)
            if missing:
                raise ValueError(f"{path}: not Pick-a-Pic v2 parquet, missing columns {missing}")

    def scan(self, file: int, start: int, keep: Callable[[int], bool]) -> Iterator[tuple[int, Record | Skipped | None]]:
        pf = open_parquet(self.files[file])
        cols = read_columns(pf.schema_arrow.names, models=False)
        for group in row_groups(pf.metadata):
            rows = range(max(start, group.first), group.stop)
            if not rows:
                continue
            if not any(keep(i) for i in rows):
                for i in rows:
                    yield i, None
                continue
            for first, batch in iter_slice(pf, group.index, group.first, rows.start, rows.stop, cols, BATCH_ROWS):
                for k in range(batch.num_rows):
                    i = first + k
                    yield i, (self._record(file, comparison(batch, k, i)) if keep(i) else None)

    def _record(self, file: int, row: Comparison) -> Record | Skipped:
        where = f"{self.files[file]}:{row.row}"
        try:
            winner = preferred_index(row.label_0)
        except (TypeError, ValueError) as err:
            return Skipped("malformed", f"{where}: skipped, {err}")
        if winner is None:
            if self.cfg.drop_ties:
                return Skipped("ties")
            raise ValueError(f"{where}: tie (label_0 = 0.5) and drop_ties is false")
        if not isinstance(row.caption, str):
            return Skipped("malformed", f"{where}: skipped, caption is {type(row.caption).__name__}, not text")
        cols = [IMAGE_COLUMNS[winner], IMAGE_COLUMNS[1 - winner]]
        blobs = [row.images[winner], row.images[1 - winner]]
        for col, blob in zip(cols, blobs):
            if not blob:
                return Skipped("malformed", f"{where}: skipped, {col} holds no image bytes")
        key = pair_id(*(sha256_hex(b)[:ID_HEX] for b in blobs))
        return Record(file, row.row, key, PICKAPIC_CATEGORY, row.caption, cols, payload=blobs)

    def fetch(self, records: list[Record]) -> None:
        """Re-read the image bytes of restored buffer records, reading only the row groups that hold them."""
        by_file: dict[int, list[Record]] = {}
        for r in records:
            by_file.setdefault(r.file, []).append(r)
        for file, recs in by_file.items():
            pf = open_parquet(self.files[file])
            for group in row_groups(pf.metadata):
                inside = [r for r in recs if group.first <= r.index < group.stop]
                if not inside:
                    continue
                lo, hi = min(r.index for r in inside), max(r.index for r in inside) + 1
                for first, batch in iter_slice(pf, group.index, group.first, lo, hi, IMAGE_COLUMNS, BATCH_ROWS):
                    for r in inside:
                        if first <= r.index < first + batch.num_rows:
                            r.payload = [image_bytes(batch.column(c)[r.index - first].as_py()) for c in r.media]

    def where(self, record: Record) -> str:
        return f"{self.files[record.file]}:{record.index}"

    def load_pair(self, record: Record) -> tuple[np.ndarray, np.ndarray]:
        out = []
        for col, blob in zip(record.media, record.payload):
            try:
                out.append(np.asarray(decode_image(blob, self.cfg.max_pixels)))
            except ValueError as err:
                raise ValueError(f"{col}: {err}") from None
            except Exception as err:  # PIL raises many types for corrupt data
                raise ValueError(f"{col} does not decode: {type(err).__name__}: {err}") from None
        return out[0], out[1]
