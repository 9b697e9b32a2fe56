"""Media: encode/decode round trips, byte determinism, atomic writes, decompression-bomb refusal."""
from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib

import numpy as np
import pytest

from pipeline.media import (
    decode_image,
    encode_image,
    encode_video,
    probe_video,
    read_video_frames,
    sha256_hex,
)
from pipeline.store import write_bytes


def _smooth_image(h: int = 48, w: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (h + w - 2)], -1).astype(np.uint8)


def _smooth_video(t: int = 9, h: int = 32, w: int = 48) -> np.ndarray:
    return np.stack([np.roll(_smooth_image(h, w), 2 * i, axis=1) for i in range(t)])


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but that carries no pixel data at all."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def test_sha256_hex():
    assert sha256_hex(b"abc") == hashlib.sha256(b"abc").hexdigest()
    assert sha256_hex(b"abc").startswith("ba7816bf")


@pytest.mark.parametrize("fmt,max_err", [("png", 0), ("jpg", 8), ("webp", 8)])
def test_image_round_trip_and_determinism(fmt, max_err):
    img = _smooth_image()
    data = encode_image(img, fmt)
    assert data == encode_image(img, fmt)  # same pixels, same bytes
    back = decode_image(data)
    assert back.mode == "RGB" and back.size == (64, 48)
    assert np.abs(np.asarray(back).astype(int) - img).max() <= max_err
    assert b"Exif" not in data and b"tIME" not in data  # no metadata, no timestamps


def test_image_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        encode_image(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="format"):
        encode_image(np.zeros((8, 8, 3), np.uint8), "tiff")


def test_decode_image_refuses_oversize_header_before_decoding():
    # 10000 x 10000 = 100 MP > 64 MP; the file has no pixel data, so decoding it would fail differently.
    with pytest.raises(ValueError, match=r"refused before decoding.*10000x10000"):
        decode_image(_png_header_only(10000, 10000))
    with pytest.raises(ValueError, match="refused before decoding"):  # past PIL's own bomb limit too
        decode_image(_png_header_only(40000, 40000))
    with pytest.raises(ValueError, match="max_pixels 1000"):
        decode_image(encode_image(_smooth_image(), "png"), max_pixels=1000)
    with pytest.raises(OSError):  # within the limit it is decoded, and the missing data is found
        decode_image(_png_header_only(100, 100))


def test_video_round_trip(tmp_path):
    frames = _smooth_video()
    data = encode_video(frames, fps=16)
    assert data == encode_video(frames, fps=16)  # deterministic bytes
    info = probe_video(data)
    assert info == {"num_frames": 9, "fps": 16.0, "width": 48, "height": 32, "codec": "h264"}
    back = read_video_frames(data)
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - frames).mean() < 3  # lossy, but close
    path = tmp_path / "v.mp4"
    write_bytes(path, data)
    assert np.array_equal(read_video_frames(path), back)  # a path reads the same as bytes
    picked = read_video_frames(path, num_frames=3)
    assert picked.shape == (3, 32, 48, 3)
    assert np.array_equal(picked[[0, -1]], back[[0, -1]])  # evenly spaced, first and last included
    assert probe_video(encode_video(frames, fps=24))["fps"] == 24.0


def test_video_odd_size_is_padded_and_bad_input_refused():
    frames = _smooth_video(5, 31, 45)
    info = probe_video(encode_video(frames, fps=16))
    assert (info["num_frames"], info["height"], info["width"]) == (5, 32, 46)
    back = read_video_frames(encode_video(frames, fps=16))
    assert np.abs(back[:, :31, :45].astype(int) - frames).mean() < 3
    with pytest.raises(ValueError, match="uint8"):
        encode_video(frames.astype(np.float32), fps=16)
    with pytest.raises(ValueError, match="no frames"):
        encode_video(np.zeros((0, 8, 8, 3), np.uint8), fps=16)


def test_write_atomic(tmp_path):
    path = tmp_path / "sub" / "a.bin"
    write_bytes(path, b"first")
    write_bytes(path, b"second")
    assert path.read_bytes() == b"second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.bin"]  # no temp files left

    with pytest.raises(TypeError):
        write_bytes(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"second"  # a failed write leaves the old file whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # readable like any new file, not mkstemp's 0600


def test_decord_and_pyav_paths_agree(monkeypatch):
    """decord reads a common width itself; without decord (or on the widths it mis-sizes) PyAV decodes."""
    import sys

    data = encode_video(_smooth_video(9, 32, 64), fps=16)
    with_decord = read_video_frames(data, num_frames=4)
    monkeypatch.setitem(sys.modules, "decord", None)  # import decord -> ImportError
    with_pyav = read_video_frames(data, num_frames=4)
    assert with_decord.shape == with_pyav.shape == (4, 32, 64, 3)
    assert np.abs(with_decord.astype(int) - with_pyav).mean() < 2  # colour conversion may round differently


def test_decode_image_tries_only_the_formats_it_is_given():
    """An ICO whose directory says 16x16 but holds a 4000x4000 PNG: PIL's ICO plugin decodes that PNG while
    *opening* (the header check would come too late); restricted to JPEG, PNG and WEBP it is never opened."""
    from PIL import Image

    from pipeline.media import DECODE_FORMATS

    png = io.BytesIO()
    Image.new("1", (4000, 4000)).save(png, format="PNG")
    ico = struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(png.getvalue()), 22) + png.getvalue()
    assert Image.open(io.BytesIO(ico)).size == (4000, 4000)  # unrestricted: the embedded PNG, decoded
    assert DECODE_FORMATS == ("JPEG", "PNG", "WEBP")
    with pytest.raises(ValueError, match=r"^not a JPEG, PNG or WEBP image$"):
        decode_image(ico)
    jpg = encode_image(_smooth_image(), "jpg")
    assert decode_image(jpg).size == (64, 48)
    with pytest.raises(ValueError, match=r"^not a PNG image$"):
        decode_image(jpg, formats=("PNG",))
