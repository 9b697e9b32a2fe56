"""Bounded reads of untrusted input: every cap a reader of a dataset from elsewhere applies, in one place.

A dataset handed to `audit` or `verify` may hold anything: a path to `/dev/zero` or a FIFO, a symlink
out of its folder, a 100 000-deep JSON line, a parquet page that decompresses to gigabytes. Each read
here is bounded *before* it happens (from `stat`, a tar header, a parquet footer), so the worst input
costs a refusal, not the machine. A refusal is an `InputError`: one line saying what is wrong, which
the caller prefixes with the file (and line or row) and counts (a bad row) or reports (a bad file).

The caps are far above anything vipo writes or Pick-a-Pic holds (docs/reliability.md lists them).
"""
from __future__ import annotations

import csv
import itertools
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

#: One image or video: a file named by a pair file, a shard member, a parquet cell. A decodable image
#: within the default max_pixels (64 MP) needs at most 64e6 x 4 bytes (RGBA, stored uncompressed).
MAX_MEDIA_BYTES = 1 << 28  # 256 MiB
#: A shard's json / txt member (a record is a few KiB).
MAX_TEXT_BYTES = 1 << 20  # 1 MiB
#: One line of a jsonl / csv pair file (a record is a prompt and two paths).
MAX_LINE_BYTES = 1 << 20  # 1 MiB
#: A manifest.json (one short entry per shard: 1M pairs in 1000-pair shards are about 250 KiB).
MAX_MANIFEST_BYTES = 1 << 26  # 64 MiB
#: Nesting of any JSON document read (vipo's records nest 3 deep). Python's parser itself stops at
#: the interpreter's recursion limit (~1000) with a RecursionError; this cap is far below it.
MAX_JSON_DEPTH = 64
#: One parquet row group, decompressed, as its footer states it (`total_byte_size`). `datasets` writes
#: 1,000 rows a row group (100 for image features; huggingface/datasets `arrow_writer.get_writer_batch_size`)
#: and Pick-a-Pic v1's train split holds 193,273,338,802 bytes in 583,747 rows (331 KB a row, its
#: README's dataset_info): about 330 MB a row group, a third of this cap.
MAX_ROW_GROUP_BYTES = 1 << 30  # 1 GiB
#: The csv module's own default `field_size_limit()` (131072 characters): kept, never raised.
MAX_CSV_FIELD = csv.field_size_limit()

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


class InputError(ValueError):
    """Untrusted input refused by a cap or a check, phrased as one line (without the file's name)."""


class TooLargeError(InputError):
    """Input over a byte cap (an image file, a member): refused before it is read."""


def file_kind(mode: int) -> str:
    """'a FIFO', 'a character device', ... for a `st_mode` that is not a regular file."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def check_regular(path: str | Path) -> int:
    """The size of `path` when it is a regular file (symlinks followed); InputError otherwise. Only
    `stat` runs: opening a FIFO would block until a writer comes, reading a device never ends."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"not a regular file ({file_kind(st.st_mode)})")
    return st.st_size


def read_regular(path: str | Path, max_bytes: int = MAX_MEDIA_BYTES) -> bytes:
    """All bytes of a regular file of at most `max_bytes`. The file is checked by `stat` before it is
    opened, opened non-blocking and checked again on the open descriptor (it may have been swapped for
    a FIFO in between), and read to at most `max_bytes + 1` bytes (it may have grown)."""
    size = check_regular(path)
    if size > max_bytes:
        raise TooLargeError(f"{size} bytes, over the {max_bytes}-byte limit")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"not a regular file ({file_kind(st.st_mode)})")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise TooLargeError(f"grew past the {max_bytes}-byte limit while read")
    return data


def resolve_inside(root: str | Path, value: str, allow_outside: bool = False) -> Path:
    """`value` (relative to `root`, or absolute) with every symlink resolved; InputError when that lands
    outside `root` and outside paths are not allowed (`../x.jpg`, `/etc/passwd`, a symlink out)."""
    if "\0" in value:
        raise InputError("the path holds a NUL byte")
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, value))
    if not allow_outside and os.path.commonpath([real_root, real]) != real_root:
        raise InputError(f"resolves to {real}, outside the data folder {real_root} (allow with --allow-outside-paths)")
    return Path(real)


def json_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), walked without recursion; stops counting past `limit`."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            stack.extend((child, depth) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def load_json(data: bytes | str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse untrusted JSON text: UTF-8 strictly, at most `max_depth` levels; InputError otherwise."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise InputError(f"not UTF-8 (byte 0x{data[err.start]:02x} at offset {err.start})") from None
    try:
        value = json.loads(data)
    except RecursionError:
        raise InputError(f"JSON nested deeper than {max_depth} levels") from None
    except ValueError as err:  # JSONDecodeError, or an integer of more digits than Python converts
        raise InputError(f"not valid JSON ({err})") from None
    if json_depth(value, max_depth) > max_depth:
        raise InputError(f"JSON nested deeper than {max_depth} levels")
    return value


def iter_lines(f: IO[bytes], max_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, str]]:
    """(line number, text) of a binary file, each line read to at most `max_bytes` bytes and decoded as
    UTF-8 (a leading byte-order mark dropped); InputError naming the line when one is longer or not UTF-8."""
    for number in itertools.count(1):
        raw = f.readline(max_bytes + 1)
        if not raw:
            return
        if len(raw) > max_bytes and not raw.endswith(b"\n"):  # max_bytes + 1 read and still no line end
            raise InputError(f"line {number}: longer than {max_bytes} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise InputError(f"line {number}: not UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1})") from None
        yield number, text.removeprefix("\ufeff") if number == 1 else text
