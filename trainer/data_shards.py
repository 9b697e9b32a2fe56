"""Pairs from our WebDataset shards (docs/dataset_format.md), read without generic decoders.

A shard is scanned through its tar headers only (`pipeline.formats.shards.index_samples`: tarfile
seeks over member data), grouped into samples by webdataset's own key rule, so skipping samples on
resume or for another rank costs a header read each. Of a sample we read the `json` member to
filter by modality and category, and the two media members, by offset, only when the pair leaves
the shuffle buffer. webdataset's `.decode()` is not used: it would unpickle `.pyd` / `.pickle`
members of an untrusted shard. Members are size-checked from their header before reading, images
from their header before decoding (`pipeline.media.decode_image`), videos from their container
header (`probe_video`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import IO

import numpy as np

from pipeline.formats.bounded import InputError, load_json
from pipeline.formats.shards import (
    READ_ERRORS,
    Member,
    Sample,
    ShardError,
    ShardReadError,
    index_samples,
    member_limit,
    read_at,
)
from pipeline.media import decode_image, probe_video, read_video_frames
from schemas.categories import CATEGORIES
from schemas.shard import IMAGE_EXTENSIONS, VIDEO_EXTENSION
from schemas.train_data import TrainDataConfig
from trainer.data_stream import Record, Skipped

MAX_JSON_BYTES = member_limit("json")  # the shard format's cap on a text member (a record is a few KB)


def _first_modality(path: str) -> str | None:
    """Modality in the json of a shard's first sample; None when that cannot be told (reported later)."""
    try:
        with open(path, "rb") as f:
            for sample in index_samples(f):
                member = sample.members.get("json")
                if member is not None and member.size <= MAX_JSON_BYTES:
                    meta = load_json(read_at(f, member.offset, member.size))
                    return meta.get("modality") if isinstance(meta, dict) else None
    except (*READ_ERRORS, OSError, ValueError):  # InputError is a ValueError
        return None
    return None


class ShardSource:
    """Local `.tar` shards, opened per scan (seekable reads: a remote shard must be fetched first)."""

    def __init__(self, files: list[str], cfg: TrainDataConfig):
        self.cfg = cfg
        self.exts = (VIDEO_EXTENSION,) if cfg.modality == "video" else IMAGE_EXTENSIONS
        # A shard folder holds one modality (docs/dataset_format.md); dropping the other's shards up front
        # keeps a reader from being dealt only shards it would skip entirely (paths: [build/shards]).
        self.files = [f for f in files if _first_modality(f) in (cfg.modality, None)]
        if not self.files:
            raise FileNotFoundError(f"data.paths: none of the {len(files)} shards holds {cfg.modality} pairs")

    def scan(self, file: int, start: int, keep: Callable[[int], bool]) -> Iterator[tuple[int, Record | Skipped | None]]:
        path = self.files[file]
        bad: list[str] = []
        try:
            with open(path, "rb") as headers, open(path, "rb") as data:
                for index, sample in enumerate(index_samples(headers)):
                    if index < start:
                        continue
                    yield index, (self._record(file, index, sample, data) if keep(index) else None)
        except ShardReadError as err:  # broke off mid-way: the samples before were yielded
            bad.append(f"{path}: {err}")
        except (*READ_ERRORS, OSError) as err:  # not a tar, or a member name twice in a sample
            bad.append(f"{path}: unreadable: {err}")
        if bad:
            yield -1, Skipped("bad_files", bad[0] + " (rest of the shard skipped)")

    def _record(self, file: int, index: int, sample: Sample[Member], data: IO[bytes]) -> Record | Skipped:
        path, key, members = self.files[file], sample.key, sample.members

        def bad(msg: str) -> Skipped:
            return Skipped("malformed", f"{path}: {key}: skipped, {msg}")

        if "json" not in members:
            return bad("no json member")
        size = members["json"].size
        if size > MAX_JSON_BYTES:
            return bad(f"json member of {size} bytes (limit {MAX_JSON_BYTES})")
        try:
            meta = load_json(read_at(data, members["json"].offset, size))
        except ShardError as err:
            return bad(f"json {err}")
        except InputError as err:  # not UTF-8, not JSON, nested too deep
            return bad(f"json member: {err}")
        if not isinstance(meta, dict):
            return bad("json member is not an object")
        if meta.get("modality") != self.cfg.modality:
            if meta.get("modality") in ("image", "video"):
                return Skipped("other_modality")
            return bad(f"json modality is {meta.get('modality')!r}")
        category, prompt = meta.get("category"), meta.get("prompt")
        if category not in CATEGORIES or not isinstance(prompt, str):
            return bad(f"json has category {category!r} and prompt of type {type(prompt).__name__}")
        media = []
        for side in ("win", "lose"):
            found = [e for e in self.exts if f"{side}.{e}" in members]
            if not found:
                return bad(f"no {side}.{'/'.join(self.exts)} member (has {sorted(members)})")
            suffix = f"{side}.{found[0]}"
            member = members[suffix]
            why = member.over(member_limit(suffix))
            if why:
                return bad(why)
            media.append([found[0], member.offset, member.size])
        pair_id = meta.get("pair_id", key)
        return Record(file, index, str(pair_id), category, prompt, media)

    def where(self, record: Record) -> str:
        return f"{self.files[record.file]}: {record.key}"

    def fetch(self, records: list[Record]) -> None:
        """Nothing to do: media are read by offset when a pair leaves the buffer."""

    def load_pair(self, record: Record) -> tuple[np.ndarray, np.ndarray]:
        out = []
        with open(self.files[record.file], "rb") as f:
            for side, (ext, offset, size) in zip(("winner", "loser"), record.media):
                try:
                    blob = read_at(f, offset, size)
                except ShardError as err:
                    raise ValueError(f"{side} {err}") from None
                try:
                    out.append(self._decode(blob, ext))
                except ValueError as err:
                    raise ValueError(f"{side} {ext}: {err}") from None
                except Exception as err:  # PIL / PyAV raise many types for corrupt data
                    raise ValueError(f"{side} {ext} does not decode: {type(err).__name__}: {err}") from None
        return out[0], out[1]

    def _decode(self, blob: bytes, ext: str) -> np.ndarray:
        if ext != VIDEO_EXTENSION:
            return np.asarray(decode_image(blob, self.cfg.max_pixels))
        info = probe_video(blob)
        pixels = (info["width"] or 0) * (info["height"] or 0)
        if not 0 < pixels <= self.cfg.max_pixels:
            raise ValueError(f"video refused before decoding: header says {info['width']}x{info['height']}, max_pixels {self.cfg.max_pixels}")
        return read_video_frames(blob, self.cfg.num_frames)
