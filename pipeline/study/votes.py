"""A study folder read back, each annotator's sequence of pairs, and the append-only vote log.

The log is the study's only state: `votes/<annotator>.jsonl`, one line per acknowledged vote. A line
is appended with one `write` and fsynced before the server answers, so every vote an annotator saw
acknowledged survives a kill or a power cut; a line torn by a crash is ignored on read and cut away
by the next append. Resuming is "the first position of the sequence without a vote", so the sequence
is a pure function of (study, annotator) and nothing else has to be stored.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.errors import VipoError
from schemas.study import (
    ANNOTATOR_ID,
    CHOICES,
    PAIR_ID,
    PAIRS_FILE,
    PREFERRED,
    RATERS,
    SIDES,
    STUDY_FILE,
    STUDY_VERSION,
    VOTE_FIELDS,
    VOTES_DIR,
    pairs_schema,
)

#: Media a study may hold, by file extension: the only content types the server ever sends for media.
MEDIA_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp", ".mp4": "video/mp4"}
MODALITIES = ("image", "video")


class StudyError(VipoError, ValueError):
    """A study folder, a vote or a votes file that breaks the contract of schemas/study.py."""


class AlreadyVoted(StudyError):
    """The annotator has a vote at this position already (a double submit, or a second tab)."""


@dataclass(frozen=True)
class Study:
    """A loaded study folder: study.json as `meta`, pairs.parquet as row dicts, `index` by pair id."""

    folder: Path
    meta: dict[str, Any]
    pairs: tuple[dict[str, Any], ...]
    index: dict[str, int]

    @property
    def seed(self) -> int:
        return self.meta["seed"]

    @property
    def repeat_share(self) -> float:
        return float(self.meta["repeat_share"])

    def pair(self, pair_id: str) -> dict[str, Any] | None:
        i = self.index.get(pair_id)
        return None if i is None else self.pairs[i]


def load_study(folder: str | Path) -> Study:
    """Read and check a study folder; any breach is one line naming the file (never a traceback)."""
    folder = Path(folder)
    meta = _load_meta(folder / STUDY_FILE)
    pairs = _load_pairs(folder / PAIRS_FILE, meta)
    return Study(folder, meta, pairs, {p["pair_id"]: i for i, p in enumerate(pairs)})


def _load_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StudyError(f"{path}: missing; is this a study folder (vipo study sample writes one)?") from None
    except (OSError, ValueError) as e:
        raise StudyError(f"{path}: not readable JSON ({_one_line(e)})") from None
    if not isinstance(meta, dict):
        raise StudyError(f"{path}: expected a JSON object")
    if meta.get("version") != STUDY_VERSION:
        raise StudyError(f"{path}: version {meta.get('version')!r}, this vipo reads version {STUDY_VERSION}")
    if not _is_int(meta.get("seed")):
        raise StudyError(f"{path}: seed must be an integer")
    share = meta.get("repeat_share")
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise StudyError(f"{path}: repeat_share must be a number in [0, 1]")
    raters = meta.get("raters")
    if not isinstance(raters, list) or any(r not in RATERS for r in raters) or len(set(raters)) != len(raters):
        raise StudyError(f"{path}: raters must be a list of distinct names from {list(RATERS)}")
    if not _is_int(meta.get("pairs")) or meta["pairs"] < 1:
        raise StudyError(f"{path}: pairs must be a positive integer")
    return meta


def _load_pairs(path: Path, meta: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    """pairs.parquet through pyarrow alone (no pandas metadata is acted on, nothing is unpickled)."""
    if not path.is_file():
        raise StudyError(f"{path}: missing")
    try:
        table = pq.ParquetFile(path).read()
    except (OSError, pa.ArrowException) as e:
        raise StudyError(f"{path}: not a readable parquet file ({_one_line(e)})") from None
    expected = pairs_schema(meta["raters"])
    got = {f.name: f.type for f in table.schema}
    want = {f.name: f.type for f in expected}
    if got != want:
        diff = sorted(set(got.items()) ^ set(want.items()), key=str)[:3]
        raise StudyError(f"{path}: columns differ from schemas.study.pairs_schema(raters): {diff}")
    rows = tuple(table.select(expected.names).to_pylist())
    if len(rows) != meta["pairs"]:
        raise StudyError(f"{path}: {len(rows)} rows, study.json says {meta['pairs']}")
    seen: set[str] = set()
    for n, row in enumerate(rows):
        _check_row(path, n, row, seen)
    return rows


def _check_row(path: Path, n: int, row: dict[str, Any], seen: set[str]) -> None:
    where = f"{path}: row {n}"
    pid = row["pair_id"]
    if not isinstance(pid, str) or not PAIR_ID.fullmatch(pid):
        raise StudyError(f"{where}: pair_id {pid!r} is not 16 hex digits")
    if pid in seen:
        raise StudyError(f"{where}: pair_id {pid} appears twice")
    seen.add(pid)
    if row["modality"] not in MODALITIES:
        raise StudyError(f"{where}: modality {row['modality']!r}, expected one of {list(MODALITIES)}")
    for col in ("media_a", "media_b"):
        rel = row[col]
        parts = PurePosixPath(rel).parts if isinstance(rel, str) else ()
        if not parts or rel.startswith("/") or ".." in parts or "\\" in rel:
            raise StudyError(f"{where}: {col} {rel!r} is not a relative path inside the study folder")
        if PurePosixPath(rel).suffix.lower() not in MEDIA_TYPES:
            raise StudyError(f"{where}: {col} {rel!r} has none of the extensions {sorted(MEDIA_TYPES)}")


def sequence(study: Study, annotator: str) -> list[tuple[str, bool, str]]:
    """The annotator's positions as (pair_id, repeat, left_side); a pure function of (study, annotator).

    Every pair once, ordered by sha256(seed, annotator, pair_id); then round(repeat_share * N) pairs
    of the first half are shown again, each at least N//3 positions after its first showing (drawn,
    or appended), to measure self-consistency. The left side is drawn per position, a repeat's
    independently of its first showing, so position effects can be measured. Only sha256 is used (not
    `hash()`, which is salted per process): a restarted server resumes the same sequence.
    """
    check_annotator(annotator)
    seed = study.seed
    ids = sorted(study.index, key=lambda pid: (_draw(seed, annotator, "order", pid), pid))
    n = len(ids)
    half = ids[: (n + 1) // 2]
    count = min(round(study.repeat_share * n), len(half))
    repeated = sorted(half, key=lambda pid: (_draw(seed, annotator, "repeat", pid), pid))[:count]
    order = [(pid, False) for pid in ids]
    gap = max(n // 3, 1)
    for pid in repeated:
        lo, hi = order.index((pid, False)) + gap, len(order)
        at = hi if lo >= hi else lo + _draw(seed, annotator, "at", pid) % (hi - lo + 1)
        order.insert(at, (pid, True))  # later inserts only push a repeat further from its first showing
    return [(pid, rep, SIDES[_draw(seed, annotator, "left", pos) % 2]) for pos, (pid, rep) in enumerate(order)]


def _draw(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "big")


def preferred_side(choice: str, left: str) -> str | None:
    """What a choice means in sides: left -> the left side, right -> the other, tie, skip -> None."""
    if choice == "left":
        return left
    if choice == "right":
        return SIDES[1 - SIDES.index(left)]
    return "tie" if choice == "tie" else None


def check_annotator(annotator: object) -> str:
    """An annotator id names a file, so it is checked against ANNOTATOR_ID before any use."""
    if not isinstance(annotator, str) or not ANNOTATOR_ID.fullmatch(annotator):
        raise StudyError(f"annotator {_short(annotator)}: expected 1-32 of A-Z a-z 0-9 _ - (starting with a letter or digit)")
    return annotator


def check_vote(vote: object) -> dict[str, Any]:
    """A vote line's fields, exactly VOTE_FIELDS with their types, and `preferred` matching choice+left."""
    if not isinstance(vote, dict) or set(vote) != set(VOTE_FIELDS):
        raise StudyError(f"a vote has exactly the fields {list(VOTE_FIELDS)}")
    check_annotator(vote["annotator"])
    bad = [
        name for name, ok in (
            ("seq", _is_int(vote["seq"]) and vote["seq"] >= 0),
            ("pair_id", isinstance(vote["pair_id"], str) and PAIR_ID.fullmatch(vote["pair_id"])),
            ("repeat", isinstance(vote["repeat"], bool)),
            ("left", vote["left"] in SIDES),
            ("choice", vote["choice"] in CHOICES),
            ("preferred", vote["preferred"] is None or vote["preferred"] in PREFERRED),
            ("ms", vote["ms"] is None or (_is_int(vote["ms"]) and vote["ms"] >= 0)),
            ("time", isinstance(vote["time"], str) and 0 < len(vote["time"]) <= 40),
        ) if not ok
    ]
    if bad:
        raise StudyError(f"vote: bad {', '.join(bad)}")
    if vote["preferred"] != preferred_side(vote["choice"], vote["left"]):
        raise StudyError(f"vote: preferred {vote['preferred']!r} does not follow from choice {vote['choice']!r} with left {vote['left']!r}")
    return vote


class VoteLog:
    """`<study>/votes/<annotator>.jsonl`, appended and fsynced; safe across threads and processes."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.dir = self.folder / VOTES_DIR
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def path(self, annotator: str) -> Path:
        return self.dir / f"{check_annotator(annotator)}.jsonl"

    def _lock(self, annotator: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(annotator, threading.Lock())

    def append(self, vote: dict[str, Any]) -> None:
        """Append one vote; when this returns the line is on disk (fsync), and only then may it be acked.

        Under the annotator's thread lock and an flock of the file (another process on the same folder),
        the file is read: a torn last line is truncated away, and a vote at a position that already has
        one raises AlreadyVoted. The line goes out in one `os.write`; a short write is undone.
        """
        line = (json.dumps({k: check_vote(vote)[k] for k in VOTE_FIELDS}, separators=(",", ":")) + "\n").encode()
        path = self.path(vote["annotator"])
        with self._lock(vote["annotator"]):
            self.dir.mkdir(parents=True, exist_ok=True)
            created = not path.exists()
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                votes, end = _parse(path.read_bytes(), path)
                if end < os.fstat(fd).st_size:
                    os.ftruncate(fd, end)  # a line torn by a crash: never acknowledged, never complete
                if any(v["seq"] == vote["seq"] for v in votes):
                    raise AlreadyVoted(f"{vote['annotator']} has a vote at position {vote['seq']} already")
                if os.write(fd, line) != len(line):
                    os.ftruncate(fd, end)
                    raise OSError(f"{path}: short write (disk full?)")
                os.fsync(fd)
            finally:
                os.close(fd)  # drops the flock
            if created:
                _fsync_dir(self.dir)

    def read(self, annotator: str) -> list[dict[str, Any]]:
        """The annotator's votes in file order; a torn or unparsable last line is ignored."""
        path = self.path(annotator)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return []
        return _parse(data, path)[0]

    def done(self, annotator: str) -> set[int]:
        return {v["seq"] for v in self.read(annotator)}

    def all_votes(self) -> list[dict[str, Any]]:
        """Every annotator's votes (files sorted by name), for the agreement analysis."""
        if not self.dir.is_dir():
            return []
        names = sorted(p.stem for p in self.dir.glob("*.jsonl") if ANNOTATOR_ID.fullmatch(p.stem))
        return [v for name in names for v in self.read(name)]


def _parse(data: bytes, path: Path) -> tuple[list[dict[str, Any]], int]:
    """(votes, end of the last good line). Only the last line may be bad (a crash mid-write)."""
    votes: list[dict[str, Any]] = []
    start = 0
    while start < len(data):
        nl = data.find(b"\n", start)
        if nl < 0:
            break  # torn: no newline
        try:
            vote = check_vote(json.loads(data[start:nl]))
            if vote["annotator"] != path.stem:
                raise StudyError("another annotator's vote")
        except (ValueError, UnicodeDecodeError) as e:  # StudyError is a ValueError
            if nl + 1 == len(data):
                break  # the last line: torn
            raise StudyError(f"{path}:{len(votes) + 1}: not a vote line ({_one_line(e)})") from None
        votes.append(vote)
        start = nl + 1
    return votes, start


def _fsync_dir(folder: Path) -> None:
    """Make a new file's name durable, not only its content (a best effort where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _short(x: object) -> str:
    r = repr(x)
    return r if len(r) <= 40 else r[:37] + "..."


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:200]
