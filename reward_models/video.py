"""Video helpers that need no weights: frame sampling (decord) and the temporal video metrics.

Image reward models score videos through `RewardModel.score_video` on frames sampled here. The
metrics follow VBench (Huang et al., CVPR 2024) where VBench needs no weights (temporal flicker,
and subject consistency given per-frame embeddings) and are documented weights-free stand-ins where
VBench runs a network (motion smoothness: AMT frame interpolation; dynamic degree: RAFT optical
flow). See docs/video_metrics.md for the formulas and every difference from VBench.

All metrics are pure functions of a frame array `(T, H, W, 3)` (uint8, or float in [0, 255]) or of
per-frame feature vectors `(T, D)`, computed in float64 one frame step at a time (no float copy of
the whole clip), and all are higher-is-better except `dynamic_degree`, which measures how much the
clip moves and is informative only (`DESCRIPTIVE_METRICS`).
"""
from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from schemas.tables import VIDEO_METRIC_NAMES as VIDEO_METRICS

"""Every name `video_metrics` can return, in its order (`subject_consistency` only with features)."""

DESCRIPTIVE_METRICS: frozenset[str] = frozenset({"dynamic_degree"})
"""Metrics that describe a clip rather than rank it: more motion is not better. Pairing must not
use them to pick a winner (report or balance on them only)."""

# ITU-R BT.601 luma, as integers so that a grey pixel (v, v, v) maps to exactly v.
_LUMA = np.array([299, 587, 114], dtype=np.float64)


def sample_indices(num_total: int, num_frames: int) -> np.ndarray:
    """`num_frames` indices spread uniformly over `[0, num_total - 1]`, first and last included
    (repeats when the clip is shorter than `num_frames`, so the output always has `num_frames` frames).

    The steps are equal only when `num_frames - 1` divides `num_total - 1` (81 frames: 3, 5, 6,
    9, 11, 17, 21, 41 or 81); otherwise they alternate between two lengths, which
    `motion_smoothness` sees as uneven motion."""
    if num_total < 1 or num_frames < 1:
        raise ValueError(f"cannot sample {num_frames} frames from {num_total}")
    if num_frames == 1:
        return np.zeros(1, dtype=np.int64)
    return np.round(np.linspace(0, num_total - 1, num_frames)).astype(np.int64)


def read_frames(source: str | Path | bytes, num_frames: int | None = None) -> np.ndarray:
    """uint8 RGB frames (T, H, W, 3) of a video file or its bytes, `num_frames` uniformly sampled
    (`sample_indices`; None = all frames).

    decord seeks straight to the frames asked for, which matters for long videos. It is not built
    for every platform, and decord 0.6 mis-sizes frames of a few small widths (8, 12, 16, 24, 48, 72 px
    give 4-channel rows or a copy error), so PyAV decodes whenever decord is absent or fails.
    """
    def _open():
        return io.BytesIO(source) if isinstance(source, bytes) else str(source)

    try:
        import decord
    except ImportError:
        decord = None
    if decord is not None:
        try:
            reader = decord.VideoReader(_open(), ctx=decord.cpu(0), num_threads=1)
            picks = range(len(reader)) if num_frames is None else sample_indices(len(reader), num_frames).tolist()
            frames = reader.get_batch(list(picks)).asnumpy()
            if frames.ndim == 4 and frames.shape[-1] == 3:
                return frames
        except Exception:
            pass
    import av

    with av.open(_open()) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    return frames if num_frames is None else frames[sample_indices(len(frames), num_frames)]


def _differences(frames: np.ndarray) -> Iterator[np.ndarray]:
    """`d_i = f_{i+1} - f_i` in float64 (uint8 differences would wrap around), one step at a time."""
    prev = frames[0].astype(np.float64)
    for frame in frames[1:]:
        cur = frame.astype(np.float64)
        yield cur - prev
        prev = cur


def _luma(frame: np.ndarray) -> np.ndarray:
    """(H, W) BT.601 luma of an (H, W, 3) frame; (H, W) and (H, W, 1) frames are luma already."""
    if frame.ndim == 2:
        return frame
    if frame.shape[-1] == 1:
        return frame[..., 0]
    if frame.shape[-1] != 3:
        raise ValueError(f"expected 1 or 3 channels, got {frame.shape[-1]}")
    return frame @ _LUMA / 1000.0


def _blur(image: np.ndarray) -> np.ndarray:
    """Separable 3x3 binomial blur ([1, 2, 1] / 4 on each axis) of an (H, W) image, edges replicated."""
    p = np.pad(image, 1, mode="edge")
    rows = p[:-2] + 2.0 * p[1:-1] + p[2:]  # (H, W + 2)
    return (rows[:, :-2] + 2.0 * rows[:, 1:-1] + rows[:, 2:]) / 16.0


def _temporal_metrics(frames: np.ndarray, names: tuple[str, ...]) -> dict[str, float]:
    """The frame-based metrics in `names`, in one pass over the consecutive differences `d_i`:

    flicker uses `|d_i|`, dynamic degree `|blur(luma(d_i))|` (both linear, so this equals the
    difference of the blurred luma frames), and motion smoothness
    `|f_i - (f_{i-1} + f_{i+1}) / 2| = |d_i - d_{i-1}| / 2` (exact in float64 for uint8 frames)."""
    frames = np.asarray(frames)
    if frames.ndim not in (3, 4):
        raise ValueError(f"expected frames (T, H, W[, C]), got shape {frames.shape}")
    if frames.ndim == 4 and "dynamic_degree" in names and frames.shape[-1] not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels, got {frames.shape[-1]}")
    sums = dict.fromkeys(names, 0.0)
    prev = None
    for d in _differences(frames) if len(frames) > 1 else ():
        if "temporal_flicker" in sums:
            sums["temporal_flicker"] += np.abs(d).mean()
        if "dynamic_degree" in sums:
            sums["dynamic_degree"] += np.abs(_blur(_luma(d))).mean()
        if "motion_smoothness" in sums and prev is not None:
            sums["motion_smoothness"] += np.abs(d - prev).mean() / 2.0
        prev = d
    steps, middles = len(frames) - 1, len(frames) - 2
    out = {}
    for name in names:  # the mean over steps (or middle frames), divided by 255 last
        if name == "temporal_flicker":
            out[name] = 1.0 if steps < 1 else float((255.0 - sums[name] / steps) / 255.0)
        elif name == "motion_smoothness":
            out[name] = 1.0 if middles < 1 else float(1.0 - sums[name] / middles / 255.0)
        elif name == "dynamic_degree":
            out[name] = 0.0 if steps < 1 else float(sums[name] / steps / 255.0)
    return out


def temporal_flicker(frames: np.ndarray) -> float:
    """`(255 - mean_i MAE(f_i, f_{i+1})) / 255`, MAE over all pixels and channels in [0, 255].

    VBench's temporal flickering, computed on the frames given. 1.0 for a static clip (or a single
    frame), lower the more consecutive frames differ."""
    return _temporal_metrics(frames, ("temporal_flicker",))["temporal_flicker"]


def motion_smoothness(frames: np.ndarray) -> float:
    """`1 - mean_{i=1..T-2} mean|f_i - (f_{i-1} + f_{i+1}) / 2| / 255`, in float64.

    Weights-free variant of VBench's motion smoothness: VBench predicts the middle frame with the
    AMT interpolation network, here the prediction is the average of the two neighbours (linear
    interpolation in time, per pixel). 1.0 for a static clip, a linear brightness change, or fewer
    than three frames; 1 - mean|A - B| / 255 for frames alternating between A and B. Unlike VBench
    it is not tolerant of motion: any displacement of texture lowers it, even perfectly smooth."""
    return _temporal_metrics(frames, ("motion_smoothness",))["motion_smoothness"]


def dynamic_degree(frames: np.ndarray) -> float:
    """Frame-difference proxy of VBench's dynamic degree: `mean_i mean|b(g_{i+1}) - b(g_i)| / 255`.

    `g` = BT.601 luma `(299 R + 587 G + 114 B) / 1000`, `b` = 3x3 binomial blur (edges replicated),
    mean over pixels then over the `T - 1` steps; in [0, 1], 0 for a static clip (or one frame),
    `s / 255` for a grey clip brightening by `s` per frame. VBench uses RAFT optical flow and a
    per-video yes/no threshold instead. Higher = more change between frames: a property of the clip,
    not a quality (see `DESCRIPTIVE_METRICS`)."""
    return _temporal_metrics(frames, ("dynamic_degree",))["dynamic_degree"]


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


def video_metrics(frames: np.ndarray, features: np.ndarray | None = None) -> dict[str, float]:
    """All metrics of one clip by name (order of `VIDEO_METRICS`): `temporal_flicker`,
    `motion_smoothness`, `dynamic_degree`, and `subject_consistency` when `features` (one embedding
    per frame of `frames`, same order) are given."""
    out = _temporal_metrics(frames, VIDEO_METRICS[:3])  # one pass over the frames
    if features is not None:
        if len(features) != len(frames):
            raise ValueError(f"{len(features)} feature vectors for {len(frames)} frames")
        out["subject_consistency"] = subject_consistency(features)
    return out
