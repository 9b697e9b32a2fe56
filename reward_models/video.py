"""Video helpers that need no weights: frame decoding (decord, PyAV) and the temporal video metrics.

Image reward models score videos through `RewardModel.score_video` on a few frames sampled here
(`scoring.video_frames`); the temporal metrics run on EVERY native frame, in VBench's own frame
structure, because their values depend on the frame spacing (a 1 px/frame pan seen through 4 of 81
frames is a 27 px/frame jump). `read_video` decodes a file once for both: it streams every frame
through `TemporalMetrics` and keeps only the sampled ones, so memory is a few frames, not the clip.

The metrics follow VBench (Huang et al., CVPR 2024; Vchitect/VBench `vbench/<dimension>.py`) where
VBench needs no weights (temporal flicker; subject consistency given per-frame embeddings) and are
documented weights-free stand-ins where VBench runs a network (motion smoothness: AMT frame
interpolation; dynamic degree: RAFT optical flow). docs/video_metrics.md has the formulas and every
difference from VBench. All are higher-is-better except `dynamic_degree`, which measures how much
the clip moves and is informative only (`DESCRIPTIVE_METRICS`).
"""
from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from schemas.tables import VIDEO_METRIC_NAMES as VIDEO_METRICS

"""Every name `video_metrics` can return, in its order (`subject_consistency` only with features)."""

TEMPORAL_METRICS: tuple[str, ...] = VIDEO_METRICS[:3]
"""The frame-based metrics (`TemporalMetrics`): flicker, motion smoothness, dynamic degree."""

DESCRIPTIVE_METRICS: frozenset[str] = frozenset({"dynamic_degree"})
"""Metrics that describe a clip rather than rank it: more motion is not better. Pairing must not
use them to pick a winner (report or balance on them only)."""

# ITU-R BT.601 luma, as integers so that a grey pixel (v, v, v) maps to exactly v.
_LUMA = np.array([299, 587, 114], dtype=np.float64)
# VBench's dynamic_degree.py reads frames at `interval = max(1, round(fps / 8))`: about 8 per second.
_DYNAMIC_DEGREE_FPS = 8.0


def sample_indices(num_total: int, num_frames: int) -> np.ndarray:
    """`num_frames` indices spread uniformly over `[0, num_total - 1]`, first and last included
    (repeats when the clip is shorter than `num_frames`, so the output always has `num_frames` frames).

    For the reward models' frames only; the temporal metrics read every frame (`read_video`)."""
    if num_total < 1 or num_frames < 1:
        raise ValueError(f"cannot sample {num_frames} frames from {num_total}")
    if num_frames == 1:
        return np.zeros(1, dtype=np.int64)
    return np.round(np.linspace(0, num_total - 1, num_frames)).astype(np.int64)


def dynamic_degree_stride(fps: float | None) -> int:
    """VBench's frame interval for dynamic degree, `max(1, round(fps / 8))` (Python's round, as
    VBench's); 1 when the frame rate is unknown. 16 fps (Wan): 2; 24 fps: 3; 8 fps: 1."""
    if fps is None or not np.isfinite(fps) or fps <= 0:
        return 1
    return max(1, round(float(fps) / _DYNAMIC_DEGREE_FPS))


def _luma(frame: np.ndarray) -> np.ndarray:
    """(H, W) BT.601 luma of an (H, W, 3) frame; (H, W) and (H, W, 1) frames are luma already."""
    if frame.ndim == 2:
        return frame.astype(np.float64)
    if frame.shape[-1] == 1:
        return frame[..., 0].astype(np.float64)
    if frame.shape[-1] != 3:
        raise ValueError(f"expected 1 or 3 channels, got {frame.shape[-1]}")
    if np.issubdtype(frame.dtype, np.integer):  # exact integer weights, no float copy of all channels
        r, g, b = (frame[..., c].astype(np.int32) for c in range(3))
        return (299 * r + 587 * g + 114 * b) / 1000.0
    return frame @ _LUMA / 1000.0


def _blur(image: np.ndarray) -> np.ndarray:
    """Separable 3x3 binomial blur ([1, 2, 1] / 4 on each axis) of an (H, W) image, edges replicated."""
    p = np.pad(image, 1, mode="edge")
    rows = p[:-2] + 2.0 * p[1:-1] + p[2:]  # (H, W + 2)
    return (rows[:, :-2] + 2.0 * rows[:, 1:-1] + rows[:, 2:]) / 16.0


def _exact(frame: np.ndarray) -> np.ndarray:
    """A frame in a type whose differences neither wrap nor round: int16 for uint8, else float64."""
    return frame.astype(np.int16) if frame.dtype == np.uint8 else frame.astype(np.float64)


class TemporalMetrics:
    """The three frame metrics of one clip, fed one native frame at a time (`add`), in one pass.

    Holds at most three frames and one blurred luma image, whatever the clip's length:

    * temporal flicker, VBench's `temporal_flickering.py`: `(255 - mean_i MAE(f_i, f_{i+1})) / 255`
      over all consecutive pairs;
    * motion smoothness, VBench's `motion_smoothness.py` structure with AMT replaced by linear
      interpolation: each odd frame `f_{2k+1}` predicted from its even neighbours as
      `floor((f_{2k} + f_{2k+2}) / 2)` (VBench's `tensor2img` truncates the interpolated frame to
      uint8), `(255 - mean_k MAE(f_{2k+1}, prediction)) / 255`;
    * dynamic degree (a frame-difference proxy of VBench's RAFT test) on the frames VBench reads,
      every `dynamic_degree_stride(fps)`-th: `mean_j mean|b(g_{j+1}) - b(g_j)| / 255` with `g` luma.
    """

    def __init__(self, fps: float | None = None, names: tuple[str, ...] = TEMPORAL_METRICS):
        unknown = set(names) - set(TEMPORAL_METRICS)
        if unknown:
            raise ValueError(f"not temporal metrics: {sorted(unknown)}; expected some of {list(TEMPORAL_METRICS)}")
        self.names = tuple(names)
        self.stride = dynamic_degree_stride(fps)
        self.count = 0
        self._shape: tuple[int, ...] | None = None
        self._prev: np.ndarray | None = None  # f_{i-1}
        self._prev2: np.ndarray | None = None  # f_{i-2}
        self._blurred: np.ndarray | None = None  # b(g) of the last frame dynamic degree read
        self._flicker = self._smooth = self._dynamic = 0.0
        self._n_flicker = self._n_smooth = self._n_dynamic = 0

    def add(self, frame: np.ndarray) -> None:
        """Feed the next native frame, (H, W[, C]) uint8 or float in [0, 255]."""
        frame = np.asarray(frame)
        if frame.ndim not in (2, 3):
            raise ValueError(f"expected a frame (H, W[, C]), got shape {frame.shape}")
        if self._shape is None:
            self._shape = frame.shape
        elif frame.shape != self._shape:
            raise ValueError(f"frame {self.count} has shape {frame.shape}, the clip's first frame {self._shape}")
        cur = _exact(frame)
        i = self.count
        if self._prev is not None and "temporal_flicker" in self.names:
            self._flicker += float(np.abs(cur - self._prev).mean(dtype=np.float64))
            self._n_flicker += 1
        if i % 2 == 0 and self._prev2 is not None and "motion_smoothness" in self.names:
            predicted = (self._prev2 + cur) // 2  # floor, in int16 for uint8 frames; VBench truncates to uint8
            self._smooth += float(np.abs(self._prev - predicted).mean(dtype=np.float64))
            self._n_smooth += 1
        if i % self.stride == 0 and "dynamic_degree" in self.names:
            blurred = _blur(_luma(cur))
            if self._blurred is not None:
                self._dynamic += float(np.abs(blurred - self._blurred).mean())
                self._n_dynamic += 1
            self._blurred = blurred
        self._prev2, self._prev = self._prev, cur
        self.count += 1

    def result(self) -> dict[str, float]:
        """The metrics in `names` order; neutral values (flicker 1, smoothness 1, dynamic degree 0)
        when the clip has too few frames for any comparison."""
        out = {}
        for name in self.names:
            if name == "temporal_flicker":
                out[name] = 1.0 if not self._n_flicker else (255.0 - self._flicker / self._n_flicker) / 255.0
            elif name == "motion_smoothness":
                out[name] = 1.0 if not self._n_smooth else (255.0 - self._smooth / self._n_smooth) / 255.0
            else:
                out[name] = 0.0 if not self._n_dynamic else self._dynamic / self._n_dynamic / 255.0
        return out


def _metrics_of(frames: np.ndarray, names: tuple[str, ...], fps: float | None = None) -> dict[str, float]:
    frames = np.asarray(frames)
    if frames.ndim not in (3, 4):
        raise ValueError(f"expected frames (T, H, W[, C]), got shape {frames.shape}")
    acc = TemporalMetrics(fps, names)
    for frame in frames:
        acc.add(frame)
    return acc.result()


def temporal_flicker(frames: np.ndarray) -> float:
    """`(255 - mean_i MAE(f_i, f_{i+1})) / 255`, MAE over all pixels and channels in [0, 255].

    VBench's temporal flickering on the frames given (pass every native frame for VBench's number).
    1.0 for a static clip (or a single frame), lower the more consecutive frames differ."""
    return _metrics_of(frames, ("temporal_flicker",))["temporal_flicker"]


def motion_smoothness(frames: np.ndarray) -> float:
    """`(255 - mean_k MAE(f_{2k+1}, floor((f_{2k} + f_{2k+2}) / 2))) / 255` over the odd frames that
    have two even neighbours.

    VBench's motion smoothness with its AMT interpolation network replaced by the per-pixel average
    of the two even neighbours (truncated to an integer, as VBench's uint8 conversion does). 1.0 for
    a static clip, a brightness ramp of whole steps, or fewer than three frames. Unlike VBench it is
    not tolerant of motion: any displacement of texture lowers it, even perfectly smooth."""
    return _metrics_of(frames, ("motion_smoothness",))["motion_smoothness"]


def dynamic_degree(frames: np.ndarray, fps: float | None = None) -> float:
    """Frame-difference proxy of VBench's dynamic degree: `mean_j mean|b(g_{j+1}) - b(g_j)| / 255`
    over the frames VBench reads (every `dynamic_degree_stride(fps)`-th, all when `fps` is None).

    `g` = BT.601 luma `(299 R + 587 G + 114 B) / 1000`, `b` = 3x3 binomial blur (edges replicated);
    in [0, 1], 0 for a static clip (or one frame), `s / 255` for a grey clip brightening by `s` per
    read frame. VBench uses RAFT optical flow and a per-video yes/no threshold instead. Higher = more
    change between frames: a property of the clip, not a quality (see `DESCRIPTIVE_METRICS`)."""
    return _metrics_of(frames, ("dynamic_degree",), fps)["dynamic_degree"]


def subject_consistency(features: np.ndarray) -> float:
    """VBench's subject (and background) consistency on per-frame embeddings `(T, D)`:

    `mean_{i=1..T-1} (max(0, cos(f_i, f_{i-1})) + max(0, cos(f_i, f_0))) / 2`.

    Each cosine is clamped at 0 before averaging, as VBench does (`max(0.0, F.cosine_similarity(..))`);
    there is no upper clip (identical features give 1.0 up to rounding). A zero vector has cosine 0
    with everything (torch's `F.normalize` convention). 1.0 for a single frame (VBench's
    background-consistency convention for zero pairs). VBench embeds frames with DINO ViT-B/16 for
    subject consistency and CLIP ViT-B/32 for background consistency; any image embedding works here."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 1:
        raise ValueError(f"expected features (T, D) with T >= 1, got shape {f.shape}")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or infinity")
    if len(f) < 2:
        return 1.0
    n = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    cos_prev = np.maximum(0.0, np.sum(n[1:] * n[:-1], axis=1))
    cos_first = np.maximum(0.0, n[1:] @ n[0])
    return float(np.mean((cos_prev + cos_first) / 2.0))


def video_metrics(
    frames: np.ndarray | VideoRead, features: np.ndarray | None = None, fps: float | None = None
) -> dict[str, float]:
    """All metrics of one clip by name (order of `VIDEO_METRICS`): the three temporal metrics on
    `frames` (every native frame, for VBench's numbers) and `subject_consistency` when `features`
    (one embedding per frame of `frames`, same order) are given.

    Given a `VideoRead`, its temporal metrics are the ones computed on every native frame while it
    was decoded, and `features` belong to its sampled frames."""
    if isinstance(frames, VideoRead):
        out = dict(frames.metrics)
    else:
        out = _metrics_of(frames, TEMPORAL_METRICS, fps)
    if features is not None:
        if len(features) != len(frames):
            raise ValueError(f"{len(features)} feature vectors for {len(frames)} frames")
        out["subject_consistency"] = subject_consistency(features)
    return out


# ------------------------------------------------------------------------------------------ decoding


def _open(source: str | Path | bytes):
    return io.BytesIO(source) if isinstance(source, bytes) else str(source)


def _decord_reader(source: str | Path | bytes):
    """A decord VideoReader whose frames come out as (H, W, 3), or None (decord absent or failing).

    decord 0.6 mis-sizes frames of a few small widths (8, 12, 16, 24, 48, 72 px give 4-channel rows
    or a copy error), so the first frame is checked before decord is trusted with the clip."""
    try:
        import decord
    except ImportError:
        return None
    try:
        reader = decord.VideoReader(_open(source), ctx=decord.cpu(0), num_threads=1)
        first = reader[0].asnumpy()
        reader.seek(0)
    except Exception:
        return None
    return reader if first.ndim == 3 and first.shape[-1] == 3 else None


def read_frames(source: str | Path | bytes, num_frames: int | None = None) -> np.ndarray:
    """uint8 RGB frames (T, H, W, 3) of a video file or its bytes, `num_frames` uniformly sampled
    (`sample_indices`; None = all frames).

    decord seeks straight to the frames asked for, which matters for long videos; PyAV decodes
    whenever decord is absent or fails (see `_decord_reader`)."""
    reader = _decord_reader(source)
    if reader is not None:
        try:
            picks = range(len(reader)) if num_frames is None else sample_indices(len(reader), num_frames).tolist()
            frames = reader.get_batch(list(picks)).asnumpy()
            if frames.ndim == 4 and frames.shape[-1] == 3:
                return frames
        except Exception:
            pass
    import av

    with av.open(_open(source)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    return frames if num_frames is None else frames[sample_indices(len(frames), num_frames)]


def _stream(source: str | Path | bytes) -> tuple[int, float | None, Iterator[np.ndarray]]:
    """(frame count, frame rate, every frame in order), one frame in memory at a time."""
    reader = _decord_reader(source)
    if reader is not None:
        n, fps = len(reader), float(reader.get_avg_fps())
        return n, fps, (reader.next().asnumpy() for _ in range(n))
    import av

    with av.open(_open(source)) as container:
        stream = container.streams.video[0]
        n = stream.frames or sum(1 for p in container.demux(stream) if p.size)
        fps = float(stream.average_rate) if stream.average_rate else None

    def frames() -> Iterator[np.ndarray]:
        with av.open(_open(source)) as container:
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")

    return n, fps, frames()


@dataclass(frozen=True)
class VideoRead:
    """What `read_video` returns: the sampled frames for the reward models and the temporal metrics
    of every native frame. Iterates, indexes and measures like its sampled frames, so it stands in
    for `read_frames`' array; `video_metrics(read, features)` takes its metrics as they are."""

    frames: np.ndarray  # uint8 (num_frames, H, W, 3), `sample_indices(num_total, num_frames)`
    metrics: dict[str, float]  # TEMPORAL_METRICS on all num_total frames
    num_total: int
    fps: float | None

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.frames)

    def __getitem__(self, index):
        return self.frames[index]


def read_video(source: str | Path | bytes, num_frames: int) -> VideoRead:
    """Decode a video once: keep `num_frames` uniformly sampled frames (the same ones `read_frames`
    returns) and compute the temporal metrics on every native frame as it streams past
    (`TemporalMetrics`, at the container's frame rate). Memory: the sampled frames plus about three
    native ones; an 81-frame 1280x720 clip is never held whole (it would be 224 MB as uint8)."""
    n, fps, stream = _stream(source)
    if n < 1:
        raise ValueError("the video has no frames")
    picks = sample_indices(n, num_frames)
    wanted = set(picks.tolist())
    acc = TemporalMetrics(fps)
    kept: dict[int, np.ndarray] = {}
    for i, frame in enumerate(stream):
        acc.add(frame)
        if i in wanted:
            kept[i] = frame
    if acc.count != n:
        raise ValueError(f"the container announced {n} frames but {acc.count} decoded")
    return VideoRead(np.stack([kept[i] for i in picks.tolist()]), acc.result(), n, fps)
