"""Encoding, decoding and safe writing of candidate media.

Bytes must be a pure function of the pixels: media sha256s go into manifests, and a build that is
killed and resumed has to produce the same shards as one that never stopped. So the encoders write
no timestamps, no encoder-version strings and no other metadata, and x264 runs with a fixed thread
count. Files appear only by atomic rename, so a reader never sees half a file.
"""
from __future__ import annotations

import hashlib
import io
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.store import write_bytes
from reward_models.video import read_frames

_PIL_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
#: The only formats an image is decoded from: what vipo writes and Pick-a-Pic holds. Restricting PIL
#: to them keeps every other plugin's parser away from untrusted bytes (ICO's, for one, decodes the
#: PNG it embeds while *opening*, before any size check could run).
DECODE_FORMATS: tuple[str, ...] = tuple(dict.fromkeys(_PIL_FORMATS.values()))


def pil_format(ext: str) -> str | None:
    """PIL's name of the image format a file extension stands for (jpg -> JPEG), None if not one of ours."""
    return _PIL_FORMATS.get(ext.lower())


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_uint8(arr: np.ndarray, ndim: int, what: str) -> None:
    if arr.dtype != np.uint8 or arr.ndim != ndim or arr.shape[-1] != 3:
        dims = "(T,H,W,3)" if ndim == 4 else "(H,W,3)"
        raise ValueError(f"{what} must be uint8 {dims}, got {arr.dtype} {arr.shape}")


def encode_image(arr: np.ndarray, fmt: str = "jpg", quality: int = 95) -> bytes:
    """Encode an RGB uint8 (H,W,3) array as jpg, png (lossless) or webp; no metadata is written."""
    _check_uint8(arr, 3, "image")
    pil_fmt = _PIL_FORMATS.get(fmt.lower())
    if pil_fmt is None:
        raise ValueError(f"unknown image format {fmt!r}; expected one of {sorted(_PIL_FORMATS)}")
    options = {
        "JPEG": {"quality": quality, "subsampling": 0 if quality >= 90 else 2, "optimize": False},
        "PNG": {"compress_level": 6, "optimize": False},
        "WEBP": {"quality": quality, "method": 4, "exact": True},
    }[pil_fmt]
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format=pil_fmt, **options)
    return buf.getvalue()


def decode_image(data: bytes, max_pixels: int = 64_000_000, formats: tuple[str, ...] = DECODE_FORMATS) -> Image.Image:
    """Decode image bytes to RGB, refusing images over `max_pixels` from their header alone.

    Only `formats` (PIL format names; default JPEG, PNG, WEBP) are tried, and for those `Image.open`
    parses only the header, so a decompression bomb is refused before any pixel is decoded (PIL's own
    bomb guard, which fires far above our limit, is reported the same way). Anything else is a
    ValueError "not a JPEG, PNG or WEBP image" without another plugin ever seeing the bytes.
    """
    try:
        with warnings.catch_warnings():  # PIL warns from 89 MP on; the limit here is max_pixels
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=list(formats))
    except Image.DecompressionBombError as err:
        raise ValueError(f"image refused before decoding: {err}") from None
    except Image.UnidentifiedImageError:
        raise ValueError(f"not a {', '.join(formats[:-1])}{' or ' if len(formats) > 1 else ''}{formats[-1]} image") from None
    w, h = img.size
    if w * h > max_pixels:
        raise ValueError(f"image refused before decoding: header says {w}x{h} = {w * h} pixels > max_pixels {max_pixels}")
    img.load()
    return img.convert("RGB")


def _even(frames: np.ndarray) -> np.ndarray:
    """yuv420p needs even width and height: repeat the last row/column where one is odd."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frames


def encode_video(frames: np.ndarray, fps: float, crf: int = 18, preset: str = "medium") -> bytes:
    """Encode uint8 (T,H,W,3) frames as H.264 (libx264, yuv420p) MP4 at `fps`.

    Deterministic: one x264 thread and bit-exact muxing (no creation time, no version tags), so the
    same frames give the same bytes. An odd height or width is padded by one edge row/column.
    """
    import av

    _check_uint8(frames, 4, "video frames")
    if len(frames) == 0:
        raise ValueError("video has no frames")
    frames = _even(frames)
    rate = Fraction(fps).limit_denominator(1001)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4", options={"fflags": "+bitexact"}) as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        stream.codec_context.options = {"crf": str(crf), "preset": preset, "threads": "1"}
        stream.codec_context.thread_count = 1
        for i, arr in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
            frame.pts = i
            frame.time_base = 1 / rate
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def _source(path_or_bytes: str | Path | bytes):
    return io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else str(path_or_bytes)


# One frame reader for the whole project (decord, PyAV fallback), kept beside the video metrics.
read_video_frames = read_frames


def probe_video(path_or_bytes: str | Path | bytes) -> dict:
    """Container facts of a video: frames, fps, width, height, codec (read with PyAV, no decoding)."""
    import av

    with av.open(_source(path_or_bytes)) as container:
        s = container.streams.video[0]
        return {"num_frames": s.frames, "fps": float(s.average_rate), "width": s.codec_context.width,
                "height": s.codec_context.height, "codec": s.codec_context.name}


class MediaStore:
    """Media files under one root: a local folder, or any fsspec URL (s3://, gs://, file://, ...).

    Keys are paths relative to the root (what the `candidates` table records), so a build's tables
    do not change when its media move. Local writes land by atomic rename; an object store's PUT is
    atomic by itself. Holds only the root string, so stages that carry it pickle cheaply.
    """

    def __init__(self, root: str | Path):
        self.root = str(root)
        self.remote = "://" in self.root

    def _url(self, key: str) -> str:
        return f"{self.root.rstrip('/')}/{key}"

    def write(self, key: str, data: bytes) -> None:
        if not self.remote:
            write_bytes(Path(self.root) / key, data)
            return
        import fsspec

        with fsspec.open(self._url(key), "wb", auto_mkdir=True) as f:
            f.write(data)

    def read(self, key: str) -> bytes:
        if not self.remote:
            return (Path(self.root) / key).read_bytes()
        import fsspec

        with fsspec.open(self._url(key), "rb") as f:
            return f.read()
