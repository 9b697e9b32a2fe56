"""pipeline.formats: the tar member key rule (webdataset's), shard samples by header, parquet slices."""
from __future__ import annotations

import io
import pickle
import re
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from webdataset.tariterators import base_plus_ext

from pipeline.formats.keys import split_member
from pipeline.formats.parquet import iter_slice, open_parquet, row_groups
from pipeline.formats.pickapic import comparison, image_bytes, missing_columns, read_columns
from pipeline.formats.shards import (
    SHARD_SUFFIXES,
    ShardError,
    ShardReadError,
    index_samples,
    read_at,
    stream_samples,
    unknown_member,
)

TRICKY_NAMES = [
    "0123456789abcdef.json",
    "0123456789abcdef.win.jpg",
    "x.win.jpg",
    "abc.tar.gz",
    "abc..json",
    "abc.",
    "abc.JSON",
    "noext",
    ".hidden",
    ".json",
    "./abc.json",
    "./dir/abc.win.jpg",
    "dir/abc.json",
    "dir.with.dots/abc.win.jpg",
    "dir.with.dots/noext",
    "a.b/c",
    "a/b/c.d.e",
    "dir/",
    "dir/.json",
    "__key__.json",
    "__key__",
    "__url__.txt",
    "a b.c d",
    "clé.jpg",
    "abc.json\n",
]


@pytest.mark.parametrize("name", TRICKY_NAMES)
def test_split_member_is_webdatasets_base_plus_ext(name):
    base, ext = base_plus_ext(name)
    assert split_member(name) == (None if base is None else (base, ext))


def _tar(path: Path, members: list[tuple[str, bytes]], dirs: tuple[str, ...] = ()) -> Path:
    with tarfile.open(path, "w") as tar:
        for name in dirs:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _members(keys: list[str]) -> list[tuple[str, bytes]]:
    return [(f"{k}.{s}", f"{k}:{s}".encode()) for k in keys for s in ("json", "txt", "win.jpg", "lose.jpg")]


def test_round_trip_keys_members_and_order(tmp_path):
    keys = ["b" * 16, "a" * 16, "c" * 16]  # not sorted: tar order is kept
    path = _tar(tmp_path / "s.tar", _members(keys), dirs=("somedir",))
    streamed = list(stream_samples(path))
    assert [s.key for s in streamed] == keys
    for s in streamed:
        assert list(s.members) == ["json", "txt", "win.jpg", "lose.jpg"] and not s.refused
        assert all(data == f"{s.key}:{suffix}".encode() for suffix, data in s.members.items())
    # webdataset itself (no decoding) sees the same samples
    theirs = [{k: v for k, v in s.items() if not k.startswith("__")} for s in wds.WebDataset(str(path), shardshuffle=False)]
    assert theirs == [s.members for s in streamed]
    with open(path, "rb") as headers, open(path, "rb") as data:
        indexed = list(index_samples(headers))
        assert [s.key for s in indexed] == keys
        for s in indexed:
            assert {suffix: read_at(data, m.offset, m.size) for suffix, m in s.members.items()} == streamed[keys.index(s.key)].members
            assert s.members["json"].name == f"{s.key}.json"


def test_grouping_follows_group_by_keys(tmp_path):
    members = [("k1.json", b"1"), ("k2.json", b"2"), ("k1.txt", b"again"), ("K3.WIN.JPG", b"3"), ("noext", b"x")]
    path = _tar(tmp_path / "s.tar", members)
    unkeyed: list[str] = []
    samples = list(stream_samples(path, unkeyed=unkeyed))
    assert [(s.key, s.members) for s in samples] == [("k1", {"json": b"1"}), ("k2", {"json": b"2"}),
                                                      ("k1", {"txt": b"again"}), ("K3", {"win.jpg": b"3"})]
    assert unkeyed == ["noext"]
    assert [s.members for s in stream_samples(path, lcase=False)][-1] == {"WIN.JPG": b"3"}
    theirs = [(s["__key__"], {k: v for k, v in s.items() if not k.startswith("__")})
              for s in wds.WebDataset(str(path), shardshuffle=False)]
    assert theirs == [(s.key, s.members) for s in samples]


def test_a_suffix_twice_in_a_sample_is_an_error(tmp_path):
    path = _tar(tmp_path / "s.tar", [("k.json", b"1"), ("k.json", b"2")])
    with pytest.raises(ShardError, match=r"k\.json: member 'json' twice in sample 'k'"):
        list(stream_samples(path))
    with pytest.raises(ShardError, match="twice"):
        list(index_samples(path))


def test_want_picks_the_members_read(tmp_path, monkeypatch):
    read = _spy_reads(monkeypatch)
    path = _tar(tmp_path / "s.tar", _members(["a", "b"]))
    samples = list(stream_samples(path, lambda key, suffix: key == "b" and suffix.startswith("win.")))
    assert [(s.key, s.members) for s in samples] == [("a", {}), ("b", {"win.jpg": b"b:win.jpg"})]
    assert read == ["b.win.jpg"]


def _spy_reads(monkeypatch) -> list[str]:
    """Names of the members whose bytes are read (every read of member data goes through extractfile)."""
    read: list[str] = []
    original = tarfile.TarFile.extractfile

    def spy(self, member):
        read.append(member.name)
        return original(self, member)

    monkeypatch.setattr(tarfile.TarFile, "extractfile", spy)
    return read


def test_an_oversized_member_is_refused_from_its_header(tmp_path, monkeypatch):
    read = _spy_reads(monkeypatch)
    path = _tar(tmp_path / "s.tar", [("k.json", b"{}"), ("k.win.jpg", b"x" * 5000), ("k.lose.jpg", b"y" * 10)])
    (sample,) = stream_samples(path, max_member_bytes=1000)
    assert sample.members == {"json": b"{}", "lose.jpg": b"y" * 10}
    assert sample.refused == {"win.jpg": "k.win.jpg is 5000 bytes, over the 1000-byte limit"}
    assert read == ["k.json", "k.lose.jpg"]
    (indexed,) = index_samples(path)
    assert indexed.members["win.jpg"].size == 5000
    assert indexed.members["win.jpg"].over(1000) == sample.refused["win.jpg"] and indexed.members["json"].over(1000) is None


def test_a_header_claiming_a_terabyte_is_a_break_found_at_once(tmp_path):
    """The header alone decides: a member claiming 1 TiB (the file holds none of it) is a break in the tar,
    found at once (tarfile alone would skip the terabyte a block at a time), after the sample so far."""
    big = tarfile.TarInfo("k.win.jpg")
    big.size = 1 << 40
    path = tmp_path / "s.tar"
    path.write_bytes(_tar(tmp_path / "head.tar", [("k.json", b"{}")]).read_bytes()[:1024] + big.tobuf())
    for read in (stream_samples, index_samples):
        samples = []
        with pytest.raises(ShardReadError, match=r"unreadable after k\.json: k\.win\.jpg claims 1099511627776 bytes"):
            for s in read(path):
                samples.append(s)
        assert [(s.key, list(s.members)) for s in samples] == [("k", ["json"])]


class _Boom:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_pickles_come_back_as_raw_bytes(tmp_path):
    marker = tmp_path / "unpickled"
    evil = pickle.dumps(_Boom(str(marker)))
    path = _tar(tmp_path / "s.tar", [("k.json", b"{}"), ("k.extra.pyd", evil), ("k.more.pickle", evil)])
    (sample,) = stream_samples(path)
    (from_stream,) = stream_samples(io.BytesIO(path.read_bytes()))
    assert from_stream.members == sample.members
    assert sample.members["extra.pyd"] == sample.members["more.pickle"] == evil
    with open(path, "rb") as f:
        (indexed,) = index_samples(f)
        assert read_at(f, indexed.members["extra.pyd"].offset, indexed.members["extra.pyd"].size) == evil
    assert not marker.exists()


def test_a_truncated_tar_yields_what_precedes_the_break(tmp_path):
    path = _tar(tmp_path / "s.tar", _members(["a", "b", "c"]))
    data = path.read_bytes()
    path.write_bytes(data[: 512 * 13 + 5])  # inside the 9 data bytes of the 7th member, b.win.jpg (header + one block each)
    for read in (stream_samples, index_samples):
        samples = []
        with pytest.raises(ShardReadError, match=r"unreadable after b\.txt: "):
            for s in read(path):
                samples.append(s)
        assert [s.key for s in samples] == ["a", "b"] and list(samples[0].members) == ["json", "txt", "win.jpg", "lose.jpg"]
    with pytest.raises(ShardError, match=r"member is truncated \(2 of 10 bytes\)"):
        read_at(io.BytesIO(b"ab"), 0, 10)


def test_not_a_tar_raises_a_tar_error(tmp_path):
    path = tmp_path / "s.tar"
    path.write_bytes(b"this is not a tar" * 100)
    for read in (stream_samples, index_samples):
        with pytest.raises(tarfile.TarError):
            list(read(path))


# -- parquet / Pick-a-Pic -----------------------------------------------------------------------------
def test_row_group_slices_and_comparisons(tmp_path):
    path = tmp_path / "p.parquet"
    table = pa.table({"caption": [f"c{i}" for i in range(7)], "jpg_0": [bytes([i]) for i in range(7)],
                      "jpg_1": [None, *(b"x" for _ in range(6))], "label_0": [1.0, 0.0, 0.5, 1.0, 0.0, 1.0, 0.0],
                      "model_0": ["m"] * 7, "other": list(range(7))})
    pq.write_table(table, path, row_group_size=3)
    pf = open_parquet(path)
    groups = row_groups(pf.metadata)
    assert [(g.index, g.first, g.stop) for g in groups] == [(0, 0, 3), (1, 3, 6), (2, 6, 7)]
    assert missing_columns(pf.schema_arrow.names) == [] and missing_columns(["caption"]) == ["jpg_0", "jpg_1", "label_0"]
    cols = read_columns(pf.schema_arrow.names)
    assert cols == ["caption", "jpg_0", "jpg_1", "label_0", "model_0"]
    got = [(first, b.num_rows) for first, b in iter_slice(pf, 1, 3, 4, 6, cols, 1)]
    assert got == [(4, 1), (5, 1)]
    (first, batch), = iter_slice(pf, 0, 0, 0, 3, cols, 8)
    c = comparison(batch, 0, first)
    assert (c.row, c.caption, c.images, c.label_0, c.models) == (0, "c0", (b"\x00", None), 1.0, ("m", None))


def test_image_cells_are_bytes_or_none():
    assert image_bytes(b"png") == b"png"
    assert image_bytes({"bytes": b"png", "path": "a.png"}) == b"png"
    assert image_bytes({"bytes": None, "path": "/etc/passwd"}) is None
    assert image_bytes("/etc/passwd") is None and image_bytes(None) is None
    assert image_bytes(b"") == b""  # empty bytes stay bytes: the caller's check decides (corrupt, not missing)


# -- untrusted names, caps and bounded reads (docs/reliability.md, "Bad input: audit and verify") ----------
@pytest.mark.parametrize("name", ["../k.json", "a/../../k.json", "/abs/k.json", "..\\k.json"])
def test_a_member_name_out_of_the_folder_is_an_error_for_every_reader(tmp_path, name):
    path = _tar(tmp_path / "s.tar", [("k.txt", b"t"), (name, b"{}")])
    for read in (stream_samples, index_samples):
        with pytest.raises(ShardError, match=rf"^member {re.escape(repr(name))} is not a relative name inside the shard$"):
            list(read(path))


def test_members_not_wanted_are_named_in_skipped_and_never_read(tmp_path, monkeypatch):
    read = _spy_reads(monkeypatch)
    path = _tar(tmp_path / "s.tar", [("k.json", b"{}"), ("k.pickle", pickle.dumps(1)), ("k.win.jpg", b"w")])
    (sample,) = stream_samples(path, lambda key, suffix: suffix in SHARD_SUFFIXES)
    assert (sample.members, sample.skipped, read) == ({"json": b"{}", "win.jpg": b"w"}, {"pickle": "k.pickle"}, ["k.json", "k.win.jpg"])
    assert unknown_member("k.pickle", "pickle").startswith("member 'k.pickle' is not part of the shard format (its members are json, ")
    assert unknown_member("k.win.webp", "win.webp") is None


def test_member_caps_follow_the_suffix(tmp_path):
    from pipeline.formats.bounded import MAX_MEDIA_BYTES, MAX_TEXT_BYTES
    from pipeline.formats.shards import member_limit

    assert (member_limit("json"), member_limit("txt"), member_limit("win.mp4")) == (MAX_TEXT_BYTES, MAX_TEXT_BYTES, MAX_MEDIA_BYTES)
    assert (MAX_TEXT_BYTES, MAX_MEDIA_BYTES) == (1 << 20, 1 << 28)
    path = _tar(tmp_path / "s.tar", [("k.json", b"x" * (MAX_TEXT_BYTES + 1)), ("k.win.jpg", b"x" * (MAX_TEXT_BYTES + 1))])
    (sample,) = stream_samples(path)
    assert list(sample.refused) == ["json"] and len(sample.members["win.jpg"]) == MAX_TEXT_BYTES + 1


def test_row_group_problem_reads_the_footer(tmp_path):
    from pipeline.formats.parquet import row_group_problem

    pq.write_table(pa.table({"a": [b"x" * 1000] * 4, "b": [1, 2, 3, 4]}), tmp_path / "t.parquet", row_group_size=2,
                   use_dictionary=False, compression="zstd")
    meta = pq.ParquetFile(tmp_path / "t.parquet").metadata
    group = meta.row_group(0)
    assert row_group_problem(meta, limit=group.total_byte_size) is None
    assert row_group_problem(meta, limit=group.total_byte_size - 1) == (
        f"row group 0 decompresses to {group.total_byte_size} bytes (a: {group.column(0).total_uncompressed_size}), "
        f"over the {group.total_byte_size - 1}-byte limit (parquet footer); nothing of it was read")


def test_load_json_caps_depth_encoding_and_digits():
    from pipeline.formats.bounded import MAX_JSON_DEPTH, InputError, json_depth, load_json

    assert load_json(b'{"a": [1, {"b": 2}]}') == {"a": [1, {"b": 2}]} and json_depth({"a": [1, {"b": 2}]}) == 3
    ok = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert json_depth(load_json(ok)) == MAX_JSON_DEPTH
    for text, why in [("[" + ok + "]", f"JSON nested deeper than {MAX_JSON_DEPTH} levels"),
                      ("[" * 100_000 + "]" * 100_000, f"JSON nested deeper than {MAX_JSON_DEPTH} levels"),
                      (b'"caf\xe9"', "not UTF-8 (byte 0xe9 at offset 4)"),
                      ("1" * 5000, "not valid JSON (Exceeds the limit (4300 digits) for integer string conversion: "
                                   "value has 5000 digits; use sys.set_int_max_str_digits() to increase the limit)")]:
        with pytest.raises(InputError, match=f"^{re.escape(why)}$"):
            load_json(text)


def test_iter_lines_bounds_each_line():
    from pipeline.formats.bounded import InputError, iter_lines

    assert list(iter_lines(io.BytesIO(b"\xef\xbb\xbfab\ncd"), 8)) == [(1, "ab\n"), (2, "cd")]  # a leading BOM dropped
    assert list(iter_lines(io.BytesIO(b"abc\nabc"), 3)) == [(1, "abc\n"), (2, "abc")]  # 3 bytes and the line end fit
    with pytest.raises(InputError, match=r"^line 2: longer than 3 bytes$"):
        list(iter_lines(io.BytesIO(b"ab\nabcd\n"), 3))
    with pytest.raises(InputError, match=r"^line 1: not UTF-8 \(byte 0xff at column 2\)$"):
        list(iter_lines(io.BytesIO(b"a\xff\n"), 10))


def test_read_regular_refuses_what_is_not_a_bounded_regular_file(tmp_path):
    import os

    from pipeline.formats.bounded import InputError, TooLargeError, read_regular, resolve_inside

    (tmp_path / "f").write_bytes(b"12345")
    assert read_regular(tmp_path / "f", 5) == b"12345"
    with pytest.raises(TooLargeError, match=r"^5 bytes, over the 4-byte limit$"):
        read_regular(tmp_path / "f", 4)
    os.mkfifo(tmp_path / "p")
    for path, kind in [(tmp_path / "p", "a FIFO"), ("/dev/zero", "a character device"), (tmp_path, "a folder")]:
        with pytest.raises(InputError, match=rf"^not a regular file \({kind}\)$"):
            read_regular(path)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "link").symlink_to(tmp_path / "f")
    assert resolve_inside(tmp_path, "in/link") == tmp_path / "f"
    with pytest.raises(InputError, match=rf"^resolves to {re.escape(str(tmp_path / 'f'))}, outside the data folder"):
        resolve_inside(tmp_path / "in", "link")
    assert resolve_inside(tmp_path / "in", "link", allow_outside=True) == tmp_path / "f"
    with pytest.raises(InputError, match="NUL"):
        resolve_inside(tmp_path, "a\0b")
