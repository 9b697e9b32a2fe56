"""Files on disk that only ever become visible whole.

Every file vipo writes (parquet parts, tars, manifests, media, reports) lands by atomic rename, so a
build killed at any moment leaves only complete files behind and resume can trust whatever it finds.
Tables are folders of such files (`pipeline/catalogue.py`).
"""
from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def write_atomic(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Readers see the old file or the whole new one, never a part: a temp file in the same folder
    (same filesystem, so the rename is atomic) is written, fsynced and renamed over `path`; on any
    error it is removed. Parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its 0600 mode would stick to the published file; os.open honours the umask.
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable; not possible everywhere (e.g. Windows), harmless to skip
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def write_table(table: pa.Table, path: str | Path) -> Path:
    """Write a parquet file atomically."""
    return write_atomic(path, lambda f: pq.write_table(table, f, compression="zstd"))


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write bytes atomically."""
    return write_atomic(path, lambda f: f.write(data))


def file_sha256(path: str | Path) -> str:
    """A file's sha256, read in chunks: a shard is never held whole."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_table(path: str | Path, schema: pa.Schema) -> pa.Table:
    return pq.read_table(path, schema=schema)


def dedupe_sorted(table: pa.Table, key: str) -> pa.Table:
    """Sort by `key` and keep the first row of each key."""
    table = table.sort_by([(key, "ascending")])
    keys = table.column(key).to_numpy(zero_copy_only=False)
    if len(keys) < 2:
        return table
    keep = np.concatenate([[True], keys[1:] != keys[:-1]])
    return table if keep.all() else table.filter(pa.array(keep))


def concat(tables: Iterable[pa.Table], schema: pa.Schema) -> pa.Table:
    tables = [t.select(schema.names).cast(schema) for t in tables]
    return pa.concat_tables(tables) if tables else schema.empty_table()
