"""Video metrics: frame sampling through decord on real (lossless x264) mp4 files, and temporal flicker
on synthetic arrays with hand-computed values."""
from __future__ import annotations

import av
import numpy as np
import pytest

from reward_models.video import read_frames, sample_indices, temporal_flicker


def write_mp4(path, frames: np.ndarray, fps: int = 8) -> None:
    """H.264 yuv420p at qp 0 (lossless in YUV): a static clip decodes to identical frames."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"qp": "0"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _pattern() -> np.ndarray:
    y, x = np.mgrid[0:32, 0:32]
    return np.stack([x * 8, y * 8, (x + y) * 4], axis=-1).astype(np.uint8)


def test_sample_indices():
    assert sample_indices(9, 3).tolist() == [0, 4, 8]
    assert sample_indices(10, 4).tolist() == [0, 3, 6, 9]
    assert sample_indices(9, 9).tolist() == list(range(9))
    assert sample_indices(2, 4).tolist() == [0, 0, 1, 1]  # short clip: repeats, still first and last
    assert sample_indices(5, 1).tolist() == [0]
    with pytest.raises(ValueError):
        sample_indices(0, 3)


def test_read_frames_samples_uniformly_first_and_last(tmp_path):
    levels = np.arange(9) * 30  # frame i is uniformly grey 30 * i
    write_mp4(tmp_path / "ramp.mp4", np.repeat(levels.astype(np.uint8)[:, None, None, None], 32, 1).repeat(32, 2).repeat(3, 3))
    frames = read_frames(str(tmp_path / "ramp.mp4"), 3)
    assert frames.dtype == np.uint8 and frames.shape == (3, 32, 32, 3)
    np.testing.assert_allclose(frames.reshape(3, -1).mean(axis=1), [0, 120, 240], atol=2)  # frames 0, 4, 8


def test_flicker_of_encoded_clips(tmp_path):
    pattern = _pattern()
    write_mp4(tmp_path / "static.mp4", np.stack([pattern] * 9))
    flicker = np.stack([pattern if i % 2 == 0 else 255 - pattern for i in range(9)])
    write_mp4(tmp_path / "flicker.mp4", flicker)

    static = read_frames(str(tmp_path / "static.mp4"), 9)
    assert temporal_flicker(static) == pytest.approx(1.0, abs=1e-6)
    decoded = read_frames(str(tmp_path / "flicker.mp4"), 9)
    expected = temporal_flicker(flicker)  # on the source pixels
    assert expected < 0.6
    assert abs(temporal_flicker(decoded) - expected) < 0.02


def test_temporal_flicker_exact_values():
    const = lambda v: np.full((2, 2, 3), v, dtype=np.uint8)  # noqa: E731
    assert temporal_flicker(np.stack([const(7)] * 5)) == 1.0
    assert temporal_flicker(const(7)[None]) == 1.0  # a single frame cannot flicker
    # MAEs 10 and 0 -> mean 5
    assert temporal_flicker(np.stack([const(0), const(10), const(10)])) == pytest.approx((255 - 5) / 255, abs=1e-12)
    # uint8 must not wrap: |10 - 200| = 190, not 66
    assert temporal_flicker(np.stack([const(200), const(10)])) == pytest.approx(65 / 255, abs=1e-12)
    # one of 12 values changes by 255 -> MAE 21.25
    a, b = const(0), const(0)
    b[0, 0, 0] = 255
    assert temporal_flicker(np.stack([a, b])) == pytest.approx((255 - 21.25) / 255, abs=1e-12)
    # black/white alternation is the worst case
    assert temporal_flicker(np.stack([const(0), const(255), const(0)])) == 0.0
    # float frames in [0, 255] work the same
    assert temporal_flicker(np.stack([const(0), const(10), const(10)]).astype(np.float32)) == pytest.approx(250 / 255, abs=1e-12)
