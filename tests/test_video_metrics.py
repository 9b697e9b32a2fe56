"""Video metrics: frame sampling through decord on real (lossless x264) mp4 files, and the temporal
metrics (flicker, motion smoothness, dynamic degree, subject consistency) on synthetic arrays with
hand-computed values and against VBench's own code transcribed here, then through mp4 files read back
with `read_frames` / `read_video` (all native frames for the metrics, sampled ones for the rewards)."""
from __future__ import annotations

import tracemalloc

import av
import numpy as np
import pytest
import torch

import reward_models.video as video
from pipeline.media import encode_video
from reward_models.video import (
    DESCRIPTIVE_METRICS,
    VIDEO_METRICS,
    TemporalMetrics,
    dynamic_degree,
    dynamic_degree_stride,
    motion_smoothness,
    read_frames,
    read_video,
    sample_indices,
    subject_consistency,
    temporal_flicker,
    video_metrics,
)


def write_mp4(path, frames: np.ndarray, fps: int = 8, rgb: bool = False) -> None:
    """H.264 at qp 0. yuv420p (default) is lossless in YUV only: a static clip decodes to identical
    frames, but the RGB -> YUV 4:2:0 conversion changes pixels. `rgb=True` uses libx264rgb (planar
    RGB), lossless in RGB: decord returns the source pixels bit for bit (frame width a multiple of 8
    outside {8, 16, 24, 48, 72}: decord 0.6 fails on those widths with any codec)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb" if rgb else "libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "rgb24" if rgb else "yuv420p"
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
    const = lambda v: np.full((2, 2, 3), v, dtype=np.uint8)
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


def const(v, shape=(2, 2, 3)) -> np.ndarray:
    return np.full(shape, v, dtype=np.uint8)


def test_static_clip():
    clip = np.stack([_pattern()] * 6)
    assert video_metrics(clip) == {"temporal_flicker": 1.0, "motion_smoothness": 1.0, "dynamic_degree": 0.0}
    # too short for a step or a middle frame: the neutral value
    assert motion_smoothness(clip[:2]) == 1.0 and motion_smoothness(clip[:1]) == 1.0
    assert dynamic_degree(clip[:1]) == 0.0


def test_linear_brightness_ramp():
    step = 7
    grey = np.stack([const(10 + step * i, (4, 4, 3)) for i in range(6)])
    assert motion_smoothness(grey) == 1.0  # (f_{i-1} + f_{i+1}) / 2 == f_i exactly in float64
    assert dynamic_degree(grey) == step / 255  # grey luma is exact (integer BT.601 weights)
    assert temporal_flicker(grey) == pytest.approx(1 - step / 255, abs=1e-12)
    # a coloured pattern brightening by `step` in every channel: same values
    pattern = (_pattern() // 2).astype(np.uint8)
    ramp = np.stack([pattern + np.uint8(step * i) for i in range(6)])
    assert motion_smoothness(ramp) == 1.0
    assert dynamic_degree(ramp) == pytest.approx(step / 255, abs=1e-12)


def test_motion_smoothness_exact_values():
    # VBench's structure: odd frames are predicted from their even neighbours, (255 - mean MAE) / 255.
    # Frames alternating A, B (A at even indices): every odd frame is predicted as A -> mean|B - A|
    a = const(15)
    b = np.array([[[0, 30, 60], [90, 120, 150]], [[180, 210, 240], [255, 0, 15]]], dtype=np.uint8)
    # |B - 15| = 15 15 45 75 105 135 165 195 225 240 15 0, sum 1230 -> mean 102.5 (uint8 would wrap 0 - 15)
    assert motion_smoothness(np.stack([a, b, a, b, a])) == (255 - 102.5) / 255
    # even length: frame 3 has no even successor and is not predicted (VBench's len(interpolate) loop)
    assert motion_smoothness(np.stack([b, a, b, a])) == (255 - 102.5) / 255
    assert temporal_flicker(np.stack([a, b, a, b, a])) == pytest.approx(1 - 102.5 / 255, abs=1e-12)
    assert motion_smoothness(np.stack([const(0), const(255)] * 3)) == 0.0  # the worst case
    # the prediction is truncated to an integer as VBench's tensor2img truncates to uint8:
    # floor((0 + 11) / 2) = 5, |10 - 5| = 5
    assert motion_smoothness(np.stack([const(0), const(10), const(11)])) == (255 - 5) / 255
    # accelerating brightness 0, 10, 30, 60: only frame 1 is predicted, |10 - 15| = 5
    assert motion_smoothness(np.stack([const(v) for v in (0, 10, 30, 60)])) == (255 - 5) / 255
    # even frames are never targets: 0, 0, 90, 0, 0 -> odd frames 1 (pred 45) and 3 (pred 45): MAE 45
    assert motion_smoothness(np.stack([const(v) for v in (0, 0, 90, 0, 0)])) == (255 - 45) / 255
    # float frames in [0, 255] work the same
    assert motion_smoothness(np.stack([const(0), const(10), const(11)]).astype(np.float32)) == (255 - 5) / 255


def test_dynamic_degree_exact_values():
    assert dynamic_degree(np.stack([const(0), const(255)] * 2)) == 1.0  # black/white every step
    # a red-only change of 100 -> luma change 29.9 everywhere
    red = const(0)
    red[..., 0] = 100
    assert dynamic_degree(np.stack([const(0), red])) == pytest.approx(29.9 / 255, abs=1e-12)
    # one pixel of a 5x5 grey frame jumps by 255: the blur spreads it over its 3x3 neighbourhood
    # keeping its sum -> mean 255 / 25
    still = const(0, (5, 5, 3))
    dot = still.copy()
    dot[2, 2] = 255
    assert dynamic_degree(np.stack([still, dot])) == pytest.approx(1 / 25, abs=1e-12)
    # a 6x6 black/white checkerboard that inverts (pixel noise, no motion): flicker says everything
    # changed by 255; the [1, 2, 1] / 4 blur cancels the +-255 pattern except at the 4 corners, where
    # the replicated edges leave (9 - 3 - 3 + 1) / 16 * 255 = 63.75 -> 4 * 63.75 / 36 / 255 = 1 / 36
    checker = (np.indices((6, 6)).sum(axis=0) % 2 * 255).astype(np.uint8)
    inverted = np.stack([checker, 255 - checker])
    assert temporal_flicker(inverted) == 0.0
    assert dynamic_degree(inverted) == pytest.approx(1 / 36, abs=1e-12)
    # steps are averaged: changes of 10 then 0
    assert dynamic_degree(np.stack([const(0), const(10), const(10)])) == 5 / 255
    # grey (T, H, W) and (T, H, W, 1) inputs are luma already
    grey = np.stack([np.full((3, 3), v, dtype=np.uint8) for v in (0, 10, 10)])
    assert dynamic_degree(grey) == 5 / 255 and dynamic_degree(grey[..., None]) == 5 / 255
    with pytest.raises(ValueError):
        dynamic_degree(np.zeros((2, 3, 3, 4), dtype=np.uint8))
    with pytest.raises(ValueError):
        dynamic_degree(np.zeros((3, 3), dtype=np.uint8))


def test_subject_consistency_exact_values():
    e1, e2 = np.eye(2)
    assert subject_consistency(np.tile([0.3, -1.2, 2.0], (5, 1))) == pytest.approx(1.0, abs=1e-12)
    # orthogonal alternating e1 e2 e1 e2 ...: cos to the previous frame is always 0, cos to the first
    # is 1 for even i -> terms 0, 0.5, 0, 0.5 (T = 5) and 0, 0.5, 0, 0.5, 0 (T = 6)
    assert subject_consistency(np.stack([e1, e2] * 2 + [e1])) == pytest.approx(1.0 / 4, abs=1e-12)
    assert subject_consistency(np.stack([e1, e2] * 3)) == pytest.approx(1.0 / 5, abs=1e-12)
    # e1, e1 + e2, e2: terms (1/sqrt2 + 1/sqrt2) / 2 and (1/sqrt2 + 0) / 2, scale does not matter
    feats = np.array([[2.0, 0.0], [3.0, 3.0], [0.0, 0.5]])
    assert subject_consistency(feats) == pytest.approx(3 / (4 * np.sqrt(2)), abs=1e-12)
    # VBench clamps each cosine at 0: e1, -e1, e1 gives terms (0 + 0) / 2 and (0 + 1) / 2 -> 0.25
    # (averaging the raw cosines would give (-1 + 0) / 2 = -0.5)
    assert subject_consistency(np.stack([e1, -e1, e1])) == pytest.approx(0.25, abs=1e-12)
    # a zero vector has cosine 0 with everything; one frame is trivially consistent
    assert subject_consistency(np.stack([e1, np.zeros(2), e1])) == pytest.approx(0.25, abs=1e-12)
    assert subject_consistency(e1[None]) == 1.0
    with pytest.raises(ValueError):
        subject_consistency(e1)
    with pytest.raises(ValueError):
        subject_consistency(np.stack([e1, [np.nan, 0.0]]))


def test_video_metrics_keys():
    clip = np.stack([const(0), const(10), const(30)])
    assert list(video_metrics(clip)) == ["temporal_flicker", "motion_smoothness", "dynamic_degree"]
    out = video_metrics(clip, np.eye(3))
    assert list(out) == list(VIDEO_METRICS)
    assert out == {
        "temporal_flicker": temporal_flicker(clip),
        "motion_smoothness": (255 - 5) / 255,
        "dynamic_degree": 15 / 255,
        "subject_consistency": subject_consistency(np.eye(3)),
    }
    assert DESCRIPTIVE_METRICS == {"dynamic_degree"}
    with pytest.raises(ValueError):
        video_metrics(clip, np.eye(2))  # one embedding per frame


def _moving_clip() -> np.ndarray:
    """9 frames 64x64: a smooth texture sliding 2 px right per frame, frame 5 brightened (a flash)."""
    y, x = np.mgrid[0:64, 0:64]
    base = np.stack([128 + 100 * np.sin(x / 5.0), 128 + 100 * np.cos(y / 7.0), 128 + 80 * np.sin((x + y) / 9.0)], -1)
    clip = np.stack([np.roll(base, 2 * i, axis=1) for i in range(9)])
    clip[5] += 20
    return np.clip(np.round(clip), 0, 255).astype(np.uint8)


def test_metrics_through_lossless_mp4(tmp_path):
    clip = _moving_clip()
    write_mp4(tmp_path / "moving.mp4", clip, rgb=True)
    feats = lambda c: c.reshape(len(c), 8, 8, 8, 8, 3).mean(axis=(2, 4)).reshape(len(c), -1) - 128.0
    expected = video_metrics(clip, feats(clip))
    assert 0.5 < expected["motion_smoothness"] < 0.99 and expected["dynamic_degree"] > 0.01
    assert expected["subject_consistency"] < 0.99

    decoded = read_frames(str(tmp_path / "moving.mp4"), 9)
    assert np.array_equal(decoded, clip)  # libx264rgb at qp 0 is lossless in RGB
    got = video_metrics(decoded, feats(decoded))
    assert list(got) == list(expected)
    for name in expected:
        assert got[name] == pytest.approx(expected[name], abs=1e-3), name
    # 5 of 9 frames: indices 0, 2, 4, 6, 8 (equal steps)
    half = read_frames(str(tmp_path / "moving.mp4"), 5)
    for name, value in video_metrics(half, feats(half)).items():
        assert value == pytest.approx(video_metrics(clip[::2], feats(clip[::2]))[name], abs=1e-3), name


# ------------------------------------------------------------------- VBench's own code, transcribed
def vbench_temporal_flickering(frames) -> float:
    """Vchitect/VBench vbench/temporal_flickering.py: cal_score -> mae_seq -> calculate_mae, verbatim
    but for cv2.absdiff(float32, float32), which is |a - b| in float32, and the frame source (VBench
    reads every frame with cv2.VideoCapture; the channel order does not change a mean)."""
    def calculate_mae(img1, img2):
        return np.mean(np.abs(np.array(img1, dtype=np.float32) - np.array(img2, dtype=np.float32)))

    ssds = [calculate_mae(frames[i], frames[i + 1]) for i in range(len(frames) - 1)]
    return (255.0 - np.mean(np.array(ssds)).item()) / 255.0


def vbench_motion_smoothness(frames, interpolate) -> float:
    """Vchitect/VBench vbench/motion_smoothness.py MotionSmoothness.motion_score + vfi_score, with the
    AMT network call replaced by `interpolate(in_0, in_1)`; img2tensor / tensor2img as in
    vbench/third_party/amt/utils/utils.py (x / 255 in float32; (x * 255).clip(0, 255).astype(uint8))."""
    extract = lambda frame_list, start_from: [frame_list[i] for i in range(start_from, len(frame_list), 2)]
    img2tensor = lambda img: torch.tensor(img).permute(2, 0, 1).unsqueeze(0) / 255.0
    tensor2img = lambda t: (t * 255.0).detach().squeeze(0).permute(1, 2, 0).cpu().numpy().clip(0, 255).astype(np.uint8)
    inputs = [img2tensor(f) for f in extract(list(frames), 0)]
    outputs = [inputs[0]]
    for in_0, in_1 in zip(inputs[:-1], inputs[1:]):
        outputs += [interpolate(in_0, in_1), in_1]
    outputs = [tensor2img(o) for o in outputs]
    ori, interp = extract(list(frames), 1), extract(outputs, 1)
    scores = [np.mean(np.abs(ori[i].astype(np.int16) - interp[i].astype(np.int16))) for i in range(len(interp))]  # cv2.absdiff
    return (255.0 - np.mean(np.array(scores))) / 255.0


def _pan(num_frames: int = 81, height: int = 48, width: int = 64, px: int = 1, seed: int = 0) -> np.ndarray:
    """A smooth texture sliding `px` px per frame, with a little per-frame noise (uint8)."""
    y, x = np.mgrid[0:height, 0:width + num_frames * px]
    tex = np.stack([128 + 100 * np.sin(x / 5.0), 128 + 100 * np.cos(y / 7.0), 128 + 80 * np.sin((x + y) / 9.0)], -1)
    noise = np.random.default_rng(seed).normal(0, 2.0, (num_frames, height, width, 3))
    frames = [tex[:, i * px : i * px + width] + noise[i] for i in range(num_frames)]
    return np.clip(np.round(np.stack(frames)), 0, 255).astype(np.uint8)


def test_temporal_flicker_is_vbench_on_all_81_frames(tmp_path):
    clip = _pan()
    ref = vbench_temporal_flickering(clip)
    assert temporal_flicker(clip) == pytest.approx(ref, abs=1e-6)
    # what the build used to do: the same formula on 4 sampled frames (27 px apart) is another number
    four = clip[sample_indices(81, 4)]
    assert temporal_flicker(four) < ref - 0.15
    # the build's own path: H.264 as `generate` writes it, decoded once by read_video; VBench's formula
    # on every frame the same decoder returns
    data = encode_video(clip, fps=16)
    got = read_video(data, 4)
    decoded = read_frames(data)
    assert got.num_total == len(decoded) == 81 and got.fps == 16.0
    assert got.metrics["temporal_flicker"] == pytest.approx(vbench_temporal_flickering(decoded), abs=1e-6)
    assert np.array_equal(got.frames, read_frames(data, 4))  # the reward models' frames are unchanged


@pytest.mark.parametrize("num_frames", [81, 80, 9, 3])
def test_motion_smoothness_is_vbench_with_linear_interpolation(num_frames):
    """The stand-in is VBench's motion smoothness, frame for frame, with AMT replaced by the average
    of the two even neighbours: exactly equal (float32 (a + b) / 2 * 255 truncates to floor((a+b)/2))."""
    clip = _pan(num_frames, px=2, seed=num_frames)
    clip[num_frames // 2] = np.clip(clip[num_frames // 2].astype(int) + 20, 0, 255)  # a flash frame
    linear = lambda in_0, in_1: in_0 * 0.5 + in_1 * 0.5
    assert motion_smoothness(clip) == pytest.approx(vbench_motion_smoothness(clip, linear), abs=1e-12)


def test_dynamic_degree_reads_vbench_frames():
    # VBench dynamic_degree.py: interval = max(1, round(fps / 8)) (Python's round: 1.5 -> 2, 2.5 -> 2)
    assert [dynamic_degree_stride(f) for f in (16, 24, 8, 12, 20, 4, 30)] == [2, 3, 1, 2, 2, 1, 4]
    assert dynamic_degree_stride(None) == 1 and dynamic_degree_stride(0) == 1
    clip = _pan(17, px=1)
    # frames 0, 2, 4, ... (VBench's extract_frame(range(0, len, interval)))
    assert dynamic_degree(clip, fps=16) == pytest.approx(dynamic_degree(clip[::2]), abs=1e-15)
    assert dynamic_degree(clip, fps=24) == pytest.approx(dynamic_degree(clip[::3]), abs=1e-15)
    assert video_metrics(clip, fps=16)["dynamic_degree"] == dynamic_degree(clip, fps=16)
    grey = np.stack([const(10 + 3 * i, (4, 4, 3)) for i in range(9)])  # +3 per frame, read every 2nd: +6
    assert dynamic_degree(grey, fps=16) == pytest.approx(6 / 255, abs=1e-15)


def test_temporal_metrics_stream_frame_by_frame():
    clip = _pan(12)
    acc = TemporalMetrics(fps=16)
    for frame in clip:
        acc.add(frame)
    assert acc.count == 12 and acc.result() == video_metrics(clip, fps=16)
    with pytest.raises(ValueError, match=r"frame 12 has shape \(8, 8, 3\)"):
        acc.add(np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="not temporal metrics"):
        TemporalMetrics(names=("subject_consistency",))


def test_read_video_decoders_agree_and_memory_is_bounded(tmp_path, monkeypatch):
    clip = _pan(81, height=96, width=128)
    data = encode_video(clip, fps=16)
    via_decord = read_video(data, 4)
    assert via_decord.metrics == video_metrics(read_frames(data), fps=16)
    # PyAV when decord is absent or refuses the clip (decord 0.6 mis-sizes a few widths)
    monkeypatch.setattr(video, "_decord_reader", lambda source: None)
    path = tmp_path / "pan.mp4"
    path.write_bytes(data)
    via_av = read_video(str(path), 4)
    assert (via_av.num_total, via_av.fps) == (81, 16.0)
    for name, value in via_decord.metrics.items():
        assert via_av.metrics[name] == pytest.approx(value, abs=2e-3), name  # two YUV -> RGB converters
    assert np.array_equal(via_av.frames, read_frames(str(path), 4))
    monkeypatch.undo()
    # streaming: the peak of Python-side allocations is a few frames whatever the clip's length
    peaks = {}
    for n in (21, 81):
        short = encode_video(clip[:n], fps=16)
        tracemalloc.start()
        read_video(short, 4)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks[81] < 1.1 * peaks[21] and peaks[81] < clip.nbytes / 2, (peaks, clip.nbytes)


def test_score_stage_measures_every_native_frame(tmp_path):
    """The build's score stage: the reward models get `video_frames` sampled frames, the temporal
    metrics are VBench's on all 81 native frames of the candidate's mp4."""
    from pipeline.score import ScoreStage
    from pipeline.store import write_bytes

    clip = _pan(81)
    data = encode_video(clip, fps=16)
    write_bytes(tmp_path / "video" / "c.mp4", data)
    stage = ScoreStage(media_root=str(tmp_path), video_frames=4, video_metrics=True)
    stage.loaded = {}  # no CLIP scorer loaded: no subject consistency
    media = stage._decode({"id": "c", "modality": "video", "media_path": "video/c.mp4"})
    read, images = media
    assert len(images) == 4 and [im.size for im in images] == [(64, 48)] * 4
    metrics = stage._video_metrics(*media)
    decoded = read_frames(data)
    assert set(metrics) == {"temporal_flicker", "motion_smoothness", "dynamic_degree"}
    assert metrics["temporal_flicker"] == pytest.approx(vbench_temporal_flickering(decoded), abs=1e-6)
    assert metrics == video_metrics(decoded, fps=16)
    # a pool without the metrics decodes only the sampled frames
    other = ScoreStage(media_root=str(tmp_path), video_frames=4, video_metrics=False)
    frames, images = other._decode({"id": "c", "modality": "video", "media_path": "video/c.mp4"})
    assert isinstance(frames, np.ndarray) and np.array_equal(frames, read.frames)
