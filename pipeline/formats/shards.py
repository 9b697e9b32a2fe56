"""vipo shard tars read by their headers: members grouped into samples, bytes out, nothing decoded.

A sample is a run of consecutive members with the same key (`keys.split_member`), as webdataset's
`group_by_keys` makes them: a key that comes back after another is a new sample, and a suffix twice
in one sample is an error. Members stay bytes: no decoder runs here, so a `.pyd` / `.pickle` member
of an untrusted shard is never unpickled (webdataset's `.decode()` would). A member's size is read
from its header, so one over the limit is refused before any of its bytes are.

Two ways in, for two access patterns:

* `stream_samples`: one pass over the tar as a stream (verify, the audit); only the members a
  caller wants are read, and only one sample is in memory at a time.
* `index_samples`: headers only, seeking over member data (the trainer); a sample is its members'
  offsets and sizes, so skipping it costs a header read and its media are read (`read_at`) only
  when used.

Member names are checked as their headers come by: an absolute name or one with a `..` part (which
an extracting reader would write outside its folder) is a `ShardError` for every reader. What a
member *may* be called is the shard format's (`SHARD_SUFFIXES`, `unknown_member`): the callers decide
whether a stray member is a problem (verify), refuses the shard (audit) or is ignored.

A tar that breaks off yields every sample before the break (the last one perhaps incomplete), then
raises `ShardReadError` naming the last good member, so a reader keeps what it could read. A header
claiming more bytes than the file holds is such a break, found from the header: tarfile would
otherwise spend minutes "skipping" a terabyte a lying header claims, a block at a time.
"""
from __future__ import annotations

import os
import tarfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Generic, TypeVar

from pipeline.formats.bounded import MAX_MEDIA_BYTES, MAX_TEXT_BYTES
from pipeline.formats.keys import split_member
from schemas.shard import IMAGE_EXTENSIONS, VIDEO_EXTENSION

MAX_MEMBER_BYTES = MAX_MEDIA_BYTES  # a media member (256 MiB) over this is not read
TEXT_SUFFIXES = ("json", "txt")
#: Every member suffix the shard format allows (docs/dataset_format.md): json, txt, win.<ext>, lose.<ext>.
SHARD_SUFFIXES = frozenset((*TEXT_SUFFIXES, *(f"{side}.{ext}" for side in ("win", "lose")
                                             for ext in (*IMAGE_EXTENSIONS, VIDEO_EXTENSION))))

T = TypeVar("T")
Source = str | Path | IO[bytes]
_BREAKS = (tarfile.TarError, EOFError, zlib.error)  # a tar (or its compression) that breaks off mid-way


class ShardError(ValueError):
    """A shard that cannot be read as samples: a suffix twice in one sample, a member cut short."""


class ShardReadError(ShardError):
    """The tar breaks off; the samples before the break were yielded."""


#: What reading a shard raises besides OSError: no tar at all (from `tarfile.open`), or the above.
READ_ERRORS = (tarfile.TarError, EOFError, ShardError)


def member_limit(suffix: str) -> int:
    """Most bytes a member of this suffix may hold before it is refused unread: json / txt 1 MiB, media 256 MiB."""
    return MAX_TEXT_BYTES if suffix in TEXT_SUFFIXES else MAX_MEMBER_BYTES


def unsafe_name(name: str) -> bool:
    """An absolute member name or one with a `..` part: extracted, it would land outside the folder."""
    return name.startswith("/") or ".." in name.replace("\\", "/").split("/")


def unknown_member(name: str, suffix: str) -> str | None:
    """Why a member is not part of the shard format (None when it is)."""
    if suffix in SHARD_SUFFIXES:
        return None
    return f"member {name!r} is not part of the shard format (its members are {', '.join(sorted(SHARD_SUFFIXES))})"


@dataclass(frozen=True)
class Member:
    """A member known from its tar header: its name, and where its bytes lie in an uncompressed tar."""

    name: str
    offset: int
    size: int

    def over(self, limit: int) -> str | None:
        """Why the member is not read under a `limit`-byte cap; None when it fits."""
        return f"{self.name} is {self.size} bytes, over the {limit}-byte limit" if self.size > limit else None


@dataclass
class Sample(Generic[T]):
    """One sample: `members` maps suffix -> bytes (`stream_samples`) or `Member` (`index_samples`);
    `refused` maps suffix -> why a wanted member was not read (over the size limit); `skipped` maps the
    suffixes of members not wanted (never read) to their full names."""

    key: str
    members: dict[str, T] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


@contextmanager
def _open(source: Source, mode: str) -> Iterator[tuple[tarfile.TarFile, int | None]]:
    """The tar, and where its data must end: the file's size in the offsets tarfile reports (None for
    a compressed tar or an unsized stream)."""
    if hasattr(source, "read"):
        end = None
        if source.seekable():
            start = source.tell()
            end = source.seek(0, os.SEEK_END) - (start if mode.startswith("r|") else 0)  # a stream counts from its start
            source.seek(start)
        tf = tarfile.open(fileobj=source, mode=mode)
    else:
        end = os.path.getsize(source)
        tf = tarfile.open(name=source, mode=mode)
    with tf:
        yield tf, end if getattr(tf.fileobj, "comptype", "tar") == "tar" else None


def _group(tf: tarfile.TarFile, end: int | None, load: Callable[[Sample, str, tarfile.TarInfo], None], lcase: bool,
           unkeyed: list[str] | None) -> Iterator[Sample]:
    """Samples of `tf` in tar order; `load` fills a sample with one member (or leaves it out)."""
    sample: Sample | None = None
    last = "the start"
    try:
        for info in iter(tf.next, None):
            if end is not None and info.offset_data + info.size > end:
                raise tarfile.ReadError(f"{info.name} claims {info.size} bytes, past the end of the file")
            if unsafe_name(info.name):
                raise ShardError(f"member {info.name!r} is not a relative name inside the shard")
            split = split_member(info.name) if info.isfile() else None
            if info.isfile() and split is None and unkeyed is not None:
                unkeyed.append(info.name)
            if split is not None:
                key, suffix = split[0], split[1].lower() if lcase else split[1]
                if sample is None or key != sample.key:
                    if sample is not None:
                        yield sample  # before the next member is read: the caller may change what it wants
                    sample = Sample(key)
                if suffix in sample.members or suffix in sample.refused or suffix in sample.skipped:
                    raise ShardError(f"{info.name}: member {suffix!r} twice in sample {key!r}")
                load(sample, suffix, info)
            last = info.name
    except _BREAKS as err:
        if sample is not None:
            yield sample
        raise ShardReadError(f"unreadable after {last}: {err}") from None
    if sample is not None:
        yield sample


def stream_samples(source: Source, want: Callable[[str, str], bool] | None = None, *,
                   max_member_bytes: int | Callable[[str], int] = member_limit, lcase: bool = True,
                   unkeyed: list[str] | None = None) -> Iterator[Sample[bytes]]:
    """The samples of a tar (a path or a binary stream, any compression), in one pass.

    `want(key, suffix)` (None: all) picks the members read; the others are skipped, never held (their
    names are in `skipped`). A wanted member over `max_member_bytes` (a number, or a function of the
    suffix: by default `member_limit`) is not read either but named in `refused`. `lcase` lowercases
    suffixes as webdataset does; names with no key are skipped, and listed in `unkeyed` when a list
    is given."""
    limit = max_member_bytes if callable(max_member_bytes) else lambda _: max_member_bytes

    def load(sample: Sample, suffix: str, info: tarfile.TarInfo) -> None:
        if want is not None and not want(sample.key, suffix):
            sample.skipped[suffix] = info.name
            return
        why = Member(info.name, info.offset_data, info.size).over(limit(suffix))
        if why:
            sample.refused[suffix] = why
        else:
            sample.members[suffix] = tf.extractfile(info).read()

    with _open(source, "r|*") as (tf, end):
        yield from _group(tf, end, load, lcase, unkeyed)


def index_samples(source: Source, *, lcase: bool = True, unkeyed: list[str] | None = None) -> Iterator[Sample[Member]]:
    """The samples of an uncompressed tar (a path or a seekable binary file) from its headers alone,
    each member as a `Member` (offset and size); `lcase` and `unkeyed` as in `stream_samples`."""

    def load(sample: Sample, suffix: str, info: tarfile.TarInfo) -> None:
        sample.members[suffix] = Member(info.name, info.offset_data, info.size)

    with _open(source, "r:") as (tf, end):
        yield from _group(tf, end, load, lcase, unkeyed)


def read_at(f: IO[bytes], offset: int, size: int) -> bytes:
    """The `size` bytes at `offset` of a seekable file (a member `index_samples` located); ShardError
    when the file ends first."""
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise ShardError(f"member is truncated ({len(data)} of {size} bytes)")
    return data
