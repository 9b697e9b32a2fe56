"""Video helpers that need no weights: frame sampling (decord) and temporal flicker.

Image reward models score videos through `RewardModel.score_video` on frames sampled here.
"""
from __future__ import annotations

import numpy as np


def sample_indices(num_total: int, num_frames: int) -> np.ndarray:
    """`num_frames` indices spread uniformly over `[0, num_total - 1]`, first and last included
    (repeats when the clip is shorter than `num_frames`, so the output always has `num_frames` frames)."""
    if num_total < 1 or num_frames < 1:
        raise ValueError(f"cannot sample {num_frames} frames from {num_total}")
    if num_frames == 1:
        return np.zeros(1, dtype=np.int64)
    return np.round(np.linspace(0, num_total - 1, num_frames)).astype(np.int64)


def read_frames(path: str, num_frames: int) -> np.ndarray:
    """uint8 RGB frames (T, H, W, 3), `T = num_frames`, uniformly sampled with decord."""
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    return reader.get_batch(sample_indices(len(reader), num_frames).tolist()).asnumpy()


def temporal_flicker(frames: np.ndarray) -> float:
    """`(255 - mean_i MAE(f_i, f_{i+1})) / 255`, MAE over all pixels and channels in [0, 255].

    1.0 for a static clip (or a single frame), lower the more consecutive frames differ."""
    frames = np.asarray(frames)
    if frames.ndim < 3:
        raise ValueError(f"expected frames (T, H, W[, C]), got shape {frames.shape}")
    if len(frames) < 2:
        return 1.0
    x = frames.astype(np.float64)  # uint8 differences would wrap around
    mae = np.abs(x[1:] - x[:-1]).reshape(len(x) - 1, -1).mean(axis=1)
    return float((255.0 - mae.mean()) / 255.0)
