"""One reader's stream of preference pairs: file order, rank/worker split, category sampling,
shuffle buffer, joint augmentation, and a position that can be saved and restored exactly.

A source (`data_shards.ShardSource`, `data_pickapic.PickapicSource`) knows how to list a file's
samples cheaply (headers / labels only) and how to load a pair's pixels; both read their files
through `pipeline.formats`, as `verify` and the audit do. Everything that decides *which* pair comes
next lives here, once, for both.

Determinism: the file order of an epoch is a permutation seeded by (seed, epoch), identical on
every rank; one numpy generator per reader drives category sampling and the shuffle buffer and is
part of the saved state; crops and flips are seeded by (seed, epoch, pair id). So a stream restored
from `state()` yields exactly what the uninterrupted stream would have yielded.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from schemas.categories import CATEGORIES
from schemas.train_data import TrainDataConfig
from trainer.batch import PairBatch
from trainer.data_transforms import joint_transform, pair_rng, to_tensor

log = logging.getLogger("vipo.trainer.data")

STAT_NAMES = ("pairs", "malformed", "ties", "other_modality", "sampled_out", "bad_files")


@dataclass
class Record:
    """A pair located in a file, known by its metadata only; `payload` (bytes) is transient, never saved."""

    file: int
    index: int
    key: str
    category: str
    prompt: str
    media: list = field(default_factory=list)  # where the two media are: [ext, tar offset, size] each, or parquet columns
    payload: Any = None

    def to_state(self) -> list:
        return [self.file, self.index, self.key, self.category, self.prompt, self.media]

    @staticmethod
    def from_state(s: list) -> Record:
        return Record(int(s[0]), int(s[1]), str(s[2]), str(s[3]), str(s[4]), list(s[5]))


@dataclass
class Skipped:
    """A sample passed over: `stat` names the counter; `message` (when set) is logged as a warning."""

    stat: str
    message: str | None = None


class Source(Protocol):
    files: list[str]

    def scan(self, file: int, start: int, keep: Callable[[int], bool]) -> Iterator[tuple[int, Record | Skipped | None]]:
        """(index, outcome) for the samples of `file` from index `start`; None for samples `keep` refuses,
        which must be passed without reading more than their headers."""
        ...

    def fetch(self, records: list[Record]) -> None:
        """Fill the payload of records restored from a saved state (where the source keeps one)."""
        ...

    def load_pair(self, record: Record) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (H, W, 3) or (T, H, W, 3) winner and loser; ValueError names what is wrong."""
        ...

    def where(self, record: Record) -> str:
        """How a warning names the pair: `shard: key` or `file:row`."""
        ...


def epoch_order(num_files: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """The order of all files in an epoch: the same on every rank and worker."""
    if not shuffle:
        return list(range(num_files))
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, 0x5EED]).permutation(num_files).tolist()


def split_files(order: list[int], reader: int, num_readers: int) -> tuple[list[int], bool]:
    """(files this reader opens, whether it keeps only every num_readers-th sample).

    By file when there are at least as many files as readers (each file opened by one reader), by
    sample otherwise (every reader scans every file's headers and keeps its own residue class).
    """
    if len(order) >= num_readers:
        return order[reader::num_readers], False
    return list(order), True


class PairStream:
    """The pairs one reader (`reader` of `num_readers` = ranks x DataLoader workers) yields."""

    def __init__(self, source: Source, cfg: TrainDataConfig, reader: int, num_readers: int, state: dict | None = None):
        self.source, self.cfg, self.reader, self.num_readers = source, cfg, reader, num_readers
        top = max(cfg.weight_of(c) for c in _categories_of(cfg))
        self._accept = {c: cfg.weight_of(c) / top for c in _categories_of(cfg)} if top > 0 else {}
        self.epoch, self.cursor, self.index, self.base = 0, 0, 0, 0
        self.buffer: list[Record] = []
        self.rng = np.random.default_rng([cfg.seed & 0xFFFFFFFF, reader, num_readers])
        self.stats = dict.fromkeys(STAT_NAMES, 0)
        self._epoch_pairs = 0
        if state is not None:
            self._restore(state)

    # -- state -------------------------------------------------------------------------------
    def state(self) -> dict:
        """Position after the last pair yielded: JSON-able (ints, strings, lists)."""
        return {
            "reader": self.reader,
            "num_readers": self.num_readers,
            "epoch": self.epoch,
            "file_cursor": self.cursor,  # position in this reader's file list of the epoch
            "sample_index": self.index,  # samples of that file already passed
            "epoch_base": self.base,  # samples of the epoch's earlier files (the by-sample split counts them)
            "buffer": [r.to_state() for r in self.buffer],
            "rng": self.rng.bit_generator.state,
            "epoch_pairs": self._epoch_pairs,
            "stats": dict(self.stats),
        }

    def _restore(self, state: dict) -> None:
        if (state.get("reader"), state.get("num_readers")) != (self.reader, self.num_readers):
            raise ValueError(
                f"data state is of reader {state.get('reader')} of {state.get('num_readers')}, "
                f"not {self.reader} of {self.num_readers}: resume with the same world size and num_workers"
            )
        self.epoch, self.cursor = int(state["epoch"]), int(state["file_cursor"])
        self.index, self.base = int(state["sample_index"]), int(state["epoch_base"])
        self.buffer = [Record.from_state(s) for s in state["buffer"]]
        self.source.fetch(self.buffer)
        self.rng.bit_generator.state = state["rng"]
        self._epoch_pairs = int(state["epoch_pairs"])
        self.stats.update({k: int(v) for k, v in state["stats"].items() if k in self.stats})

    # -- pairs -------------------------------------------------------------------------------
    def _emit(self, record: Record) -> dict | None:
        try:
            win, lose = self.source.load_pair(record)
            w, lo, corner = joint_transform(
                to_tensor(win), to_tensor(lose), size=self.cfg.resolution, random_crop=self.cfg.random_crop,
                random_flip=self.cfg.random_flip, rng=pair_rng(self.cfg.seed, self.epoch, record.key),
            )
        except ValueError as err:
            self.stats["malformed"] += 1
            log.warning("%s: skipped, %s", self.source.where(record), err)
            return None
        finally:
            record.payload = None
        if w.shape != lo.shape:
            self.stats["malformed"] += 1
            log.warning("%s: skipped, winner %s and loser %s differ in shape", self.source.where(record),
                        tuple(w.shape), tuple(lo.shape))
            return None
        self.stats["pairs"] += 1
        self._epoch_pairs += 1
        return {"pixels_w": w, "pixels_l": lo, "prompt": record.prompt, "category": record.category, "pair_id": record.key,
                "original_size": tuple(int(d) for d in win.shape[-3:-1]), "crop_top_left": corner}

    def _take(self, rec: Record | Skipped | None) -> Record | None:
        """The record to put in the buffer, or None after counting why not."""
        if rec is None:
            return None
        if isinstance(rec, Skipped):
            self.stats[rec.stat] += 1
            if rec.message:
                log.warning("%s", rec.message)
            return None
        if self.cfg.category_weights:
            accept = self._accept.get(rec.category, 0.0)
            if accept < 1.0 and not self.rng.random() < accept:
                self.stats["sampled_out"] += 1
                return None
        return rec

    def _pop(self) -> Record:
        j = int(self.rng.integers(len(self.buffer)))
        self.buffer[j], self.buffer[-1] = self.buffer[-1], self.buffer[j]
        return self.buffer.pop()

    def __iter__(self) -> Iterator[dict]:
        size = self.cfg.shuffle_buffer
        while self.cfg.epochs is None or self.epoch < self.cfg.epochs:
            order = epoch_order(len(self.source.files), self.cfg.seed, self.epoch, self.cfg.shuffle_shards)
            files, by_sample = split_files(order, self.reader, self.num_readers)
            while self.cursor < len(files):
                keep = _residue(self.base, self.num_readers, self.reader) if by_sample else _everything
                for index, outcome in self.source.scan(files[self.cursor], self.index, keep):
                    if index >= 0:  # -1: a file-level problem, reported after the file's last good sample
                        self.index = index + 1
                    rec = self._take(outcome)
                    if rec is None:
                        continue
                    if size == 0:
                        item = self._emit(rec)
                    elif len(self.buffer) < size:
                        self.buffer.append(rec)
                        continue
                    else:
                        j = int(self.rng.integers(size))
                        rec, self.buffer[j] = self.buffer[j], rec
                        item = self._emit(rec)
                    if item is not None:
                        yield item
                self.cursor, self.base, self.index = self.cursor + 1, self.base + self.index, 0
            while self.buffer:
                item = self._emit(self._pop())
                if item is not None:
                    yield item
            if self._epoch_pairs == 0:
                raise RuntimeError(
                    f"reader {self.reader} of {self.num_readers} got no usable pair in epoch {self.epoch} from "
                    f"{len(files)} of {len(self.source.files)} files (counts: {self.stats})"
                )
            self.epoch, self.cursor, self.index, self.base, self._epoch_pairs = self.epoch + 1, 0, 0, 0, 0

    def batches(self, batch_size: int) -> Iterator[tuple[PairBatch, dict]]:
        """(batch, state after it); the last batch of a finite stream may be short."""
        items: list[dict] = []
        for item in self:
            items.append(item)
            if len(items) == batch_size:
                yield PairBatch.collate(items), self.state()
                items = []
        if items:
            yield PairBatch.collate(items), self.state()


def _everything(index: int) -> bool:
    return True


def _residue(base: int, n: int, me: int) -> Callable[[int], bool]:
    return lambda index: (base + index) % n == me


def _categories_of(cfg: TrainDataConfig) -> list[str]:
    return [n for n, c in CATEGORIES.items() if c.modality == cfg.modality]
