"""The trainer's data loader: `build_loader(cfg, batch_size, rank=, world_size=)` -> batches of
`PairBatch`, endless by default (the loop counts steps; `cfg.epochs` makes it finite), with
`state_dict()` / `load_state_dict()` to resume without replaying.

Readers: one per rank when `num_workers` is 0, else one per DataLoader worker of each rank; reader
`rank * W + worker` of `world_size * W` (`data_stream.split_files`). A worker batches its own pairs
and hands each batch over with its reader's position, so the main process always knows how far
every reader got *in what it has received* (prefetched batches do not count). The DataLoader takes
batches from workers in turn; a restored loader starts that rotation at the worker whose batch was
next, so the resumed sequence is the uninterrupted one, batch for batch.
"""
from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from pathlib import Path

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from schemas.train_data import TrainDataConfig
from trainer.batch import PairBatch
from trainer.data_pickapic import PickapicSource
from trainer.data_shards import ShardSource
from trainer.data_stream import STAT_NAMES, PairStream, Source

STATE_VERSION = 1
_SUFFIX = {"shards": ".tar", "pickapic": ".parquet"}


def resolve_paths(paths: list[str], suffix: str) -> list[str]:
    """Sorted, deduplicated files from files, folders (recursive) and glob patterns."""
    found: set[str] = set()
    for p in paths:
        expanded = sorted(glob.glob(p, recursive=True)) if glob.has_magic(p) else [p]
        if not expanded:
            raise FileNotFoundError(f"data.paths: {p!r} matches no file")
        for e in expanded:
            if os.path.isdir(e):
                found.update(str(f) for f in Path(e).rglob(f"*{suffix}") if f.is_file())
            elif os.path.isfile(e):
                found.add(str(Path(e)))
            else:
                raise FileNotFoundError(f"data.paths: {e!r} does not exist")
    files = sorted(found)
    if not files:
        raise FileNotFoundError(f"data.paths: no *{suffix} file in {paths}")
    return files


def make_source(cfg: TrainDataConfig) -> Source:
    files = resolve_paths(cfg.paths, _SUFFIX[cfg.source])
    return ShardSource(files, cfg) if cfg.source == "shards" else PickapicSource(files, cfg)


class _Readers(IterableDataset):
    """DataLoader side: worker `w` runs logical reader `(first + w) % W` from its saved state."""

    def __init__(self, source: Source, cfg: TrainDataConfig, batch_size: int, rank: int, world_size: int,
                 states: list[dict | None], first: int):
        self.source, self.cfg, self.batch_size = source, cfg, batch_size
        self.rank, self.world_size, self.states, self.first = rank, world_size, states, first

    def __iter__(self) -> Iterator[tuple[int, PairBatch, dict]]:
        info = get_worker_info()
        workers = len(self.states)
        logical = (self.first + (info.id if info else 0)) % workers
        stream = PairStream(self.source, self.cfg, self.rank * workers + logical, self.world_size * workers,
                            self.states[logical])
        for batch, state in stream.batches(self.batch_size):
            yield logical, batch, state


def _identity(x):
    return x


class PairLoader:
    """Iterable of `PairBatch`; iterating again continues where the last iteration stopped."""

    def __init__(self, cfg: TrainDataConfig, batch_size: int, rank: int, world_size: int):
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, {world_size}")
        self.cfg, self.batch_size, self.rank, self.world_size = cfg, batch_size, rank, world_size
        self.source = make_source(cfg)
        self.workers = max(1, cfg.num_workers)
        self._states: list[dict | None] = [None] * self.workers
        self._next = 0  # logical reader whose batch comes next
        self.batches_seen = 0

    def __iter__(self) -> Iterator[PairBatch]:
        if self.cfg.num_workers == 0:
            items = _Readers(self.source, self.cfg, self.batch_size, self.rank, self.world_size, self._states, 0)
        else:
            items = DataLoader(
                _Readers(self.source, self.cfg, self.batch_size, self.rank, self.world_size, list(self._states), self._next),
                batch_size=None, num_workers=self.cfg.num_workers, collate_fn=_identity,
                prefetch_factor=2, persistent_workers=False,
            )
        for logical, batch, state in items:
            self._states[logical] = state
            self._next = (logical + 1) % self.workers
            self.batches_seen += 1
            yield batch

    @property
    def stats(self) -> dict[str, int]:
        """Counts over all readers of this rank: pairs yielded and what was skipped, by reason."""
        out = dict.fromkeys(STAT_NAMES, 0)
        for s in self._states:
            for k, v in (s or {}).get("stats", {}).items():
                out[k] += v
        return out

    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "source": self.cfg.source,
            "files": [os.path.basename(f) for f in self.source.files],
            "batch_size": self.batch_size,
            "rank": self.rank,
            "world_size": self.world_size,
            "workers": self.workers,
            "next_reader": self._next,
            "batches_seen": self.batches_seen,
            "readers": list(self._states),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue after the last batch the saved loader yielded; refuses a state of other data or layout."""
        mine = self.state_dict()
        for key in ("version", "source", "batch_size", "rank", "world_size", "workers", "files"):
            if state.get(key) != mine[key]:
                shown = (lambda v: f"{len(v)} files" if isinstance(v, list) else repr(v))
                raise ValueError(f"data state: {key} is {shown(state.get(key))}, this loader has {shown(mine[key])}")
        self._states = list(state["readers"])
        self._next = int(state["next_reader"])
        self.batches_seen = int(state["batches_seen"])


def build_loader(cfg: TrainDataConfig, batch_size: int, *, rank: int = 0, world_size: int = 1) -> PairLoader:
    """The loader of one rank; see the module docstring for the split and resume semantics."""
    return PairLoader(cfg, batch_size, rank, world_size)

