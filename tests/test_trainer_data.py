"""Trainer data: shards and Pick-a-Pic parquet -> PairBatch, joint crops, weights, ranks, resume, video."""
from __future__ import annotations

import json
import logging
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds
from pydantic import ValidationError

from pipeline.media import encode_image, encode_video
from reward_models.video import sample_indices
from schemas.ids import pair_id
from schemas.train_data import PICKAPIC_CATEGORY, TrainDataConfig
from trainer.data import build_loader
from trainer.data_shards import ShardSource
from trainer.data_stream import STAT_NAMES

IMAGE_CATS = ("aesthetics", "composition", "text_rendering")


def _key(i: int) -> str:
    return pair_id(f"w{i}", f"l{i}")


def _sample(i: int, category: str, win: bytes, lose: bytes, ext: str = "png", modality: str = "image") -> dict:
    meta = {"pair_id": _key(i), "prompt_id": f"p{i}", "prompt": f"prompt {i}", "category": category, "modality": modality}
    return {"__key__": _key(i), "json": json.dumps(meta).encode(), "txt": meta["prompt"].encode(),
            f"win.{ext}": win, f"lose.{ext}": lose}


def _write_shard(path: Path, samples: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path)) as sink:
        for s in samples:
            sink.write(s)
    return path


def _flat(value: int, size=(8, 8)) -> bytes:
    return encode_image(np.full((*size, 3), value, np.uint8), "png")


def _shards(folder: Path, num_shards: int, per_shard: int, cats=IMAGE_CATS, size=(8, 8)) -> list[int]:
    """Shards whose pair i has winner value i % 256 and loser 255 - that; returns the indices written."""
    i = 0
    for s in range(num_shards):
        samples = []
        for _ in range(per_shard):
            samples.append(_sample(i, cats[i % len(cats)], _flat(i % 256, size), _flat(255 - i % 256, size)))
            i += 1
        _write_shard(folder / f"train-{s:06d}.tar", samples)
    return list(range(i))


def _cfg(paths, **kw) -> TrainDataConfig:
    base = {"paths": [str(p) for p in paths], "resolution": 8, "shuffle_buffer": 0}
    return TrainDataConfig(**{**base, **kw})


def _take(loader, n: int) -> list:
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def _ids(batches) -> list[str]:
    return [k for b in batches for k in b.pair_ids]


# -- config ----------------------------------------------------------------------------------------
def test_config_rejects_unknown_category_and_keys():
    with pytest.raises(ValidationError, match="unknown category 'sharpness'"):
        TrainDataConfig(paths=["x"], category_weights={"sharpness": 1.0})
    with pytest.raises(ValidationError, match="video category but modality is 'image'"):
        TrainDataConfig(paths=["x"], category_weights={"motion_quality": 1.0})
    with pytest.raises(ValidationError, match="Extra inputs"):
        TrainDataConfig(paths=["x"], shuffle=True)


def test_missing_paths_fail_with_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no \\*.tar file"):
        build_loader(_cfg([tmp_path]), 2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_loader(_cfg([tmp_path / "nope.tar"]), 2)


# -- joint crop / flip -----------------------------------------------------------------------------
def _marker_pair(i: int, h: int, w: int, y: int, x: int) -> dict:
    win = np.zeros((h, w, 3), np.uint8)
    lose = np.full((h, w, 3), 100, np.uint8)
    win[y, x] = lose[y, x] = 255
    return _sample(i, "aesthetics", encode_image(win, "png"), encode_image(lose, "png"))


def test_center_crop_is_exact(tmp_path):
    # 32 x 48 at resolution 32: no resize, the centre window is columns 8..39.
    shard = _write_shard(tmp_path / "train-000000.tar", [_marker_pair(0, 32, 48, 5, 10)])
    (batch,) = _take(build_loader(_cfg([shard], resolution=32, epochs=1), 4), 1)
    assert batch.pixels_w.shape == (1, 3, 32, 32) and batch.pixels_w.dtype == torch.float32
    w, lose = batch.pixels_w[0], batch.pixels_l[0]
    assert w[:, 5, 2].tolist() == [1.0, 1.0, 1.0]
    assert (w.sum(0) > -3).nonzero().tolist() == [[5, 2]]  # black (-1) everywhere else
    assert lose[0, 0, 0].item() == pytest.approx(100 / 127.5 - 1)
    assert (lose.sum(0) > 0).nonzero().tolist() == [[5, 2]]


def test_random_crop_and_flip_are_joint(tmp_path):
    # no resize at 32 px: wide images are cropped along x, tall ones along y
    samples = [_marker_pair(i, 32, 56, 3 + i, 7 + 3 * i) if i % 2 else _marker_pair(i, 56, 32, 7 + 3 * i, 3 + i) for i in range(12)]
    shard = _write_shard(tmp_path / "train-000000.tar", samples)
    cfg = _cfg([shard], resolution=32, random_crop=True, random_flip=True, epochs=2)
    places, cut = set(), 0
    for batch in build_loader(cfg, 4):
        for w, lose in zip(batch.pixels_w, batch.pixels_l):
            at_w, at_l = (w.sum(0) > -3).nonzero().tolist(), (lose.sum(0) > 0).nonzero().tolist()
            assert at_w == at_l and len(at_w) <= 1  # the marker sits at the same place in both (or was cut from both)
            places.update(map(tuple, at_w))
            cut += not at_w
    assert len(places) > 12 and cut < 24  # crops really move between pairs and epochs


def test_sdxl_conditioning_sizes_and_crop_corners(tmp_path):
    # train_diffusion_dpo_sdxl.py: original_size = (height, width) before the resize; centre crop at
    # y1 = max(0, int(round((H' - res) / 2.0))), x1 likewise, in the resized image
    shard = _write_shard(tmp_path / "c" / "train-000000.tar", [_marker_pair(0, 30, 40, 2, 3)])
    (batch,) = _take(build_loader(_cfg([shard], resolution=24, epochs=1), 1), 1)  # 30 x 40 -> 24 x 32
    assert batch.original_sizes == [(30, 40)]
    assert batch.crop_top_lefts == [(max(0, int(round((24 - 24) / 2.0))), max(0, int(round((32 - 24) / 2.0))))] == [(0, 4)]
    # random crops and flips: the corner is where the fed pixels sit in the (flipped) 32 x 56 image
    samples = [_marker_pair(i, 32, 56, 5 + i, 9 + 3 * i) for i in range(10)]
    shard = _write_shard(tmp_path / "r" / "train-000000.tar", samples)
    cfg = _cfg([shard], resolution=32, random_crop=True, random_flip=True, epochs=1)
    markers = {_key(i): (5 + i, 9 + 3 * i) for i in range(10)}
    flipped = 0
    for batch in build_loader(cfg, 5):
        assert batch.original_sizes == [(32, 56)] * 5
        for w, key, (top, left) in zip(batch.pixels_w, batch.pair_ids, batch.crop_top_lefts):
            y, x = markers[key]
            at = (w.sum(0) > -3).nonzero().tolist()
            assert top == 0 and 0 <= left <= 56 - 32
            if at:  # seen at x - left unflipped, or at (55 - x) - left in the flipped image
                assert at[0][0] == y and at[0][1] in (x - left, 55 - x - left)
                flipped += at[0][1] == 55 - x - left and x - left != 55 - x - left
    assert flipped  # some pairs were flipped, and their corners are in flipped coordinates


def test_identical_winner_and_loser_give_identical_tensors(tmp_path):
    img = encode_image(np.random.default_rng(0).integers(0, 256, (30, 44, 3), dtype=np.uint8), "png")
    shard = _write_shard(tmp_path / "train-000000.tar", [_sample(i, "aesthetics", img, img) for i in range(6)])
    cfg = _cfg([shard], resolution=24, random_crop=True, random_flip=True, epochs=1)  # resized 30 -> 24, then cropped
    (batch,) = _take(build_loader(cfg, 6), 1)
    assert batch.pixels_w.shape == (6, 3, 24, 24)
    assert torch.equal(batch.pixels_w, batch.pixels_l)
    assert batch.pixels_w.min() >= -1 and batch.pixels_w.max() <= 1
    assert len({b.numpy().tobytes() for b in batch.pixels_w}) >= 3  # pairs get their own crop / flip (22 choices here)


# -- shards: order, weights, ranks -----------------------------------------------------------------
def test_one_epoch_reads_every_pair_once_with_its_pixels(tmp_path):
    written = _shards(tmp_path, 3, 5)
    loader = build_loader(_cfg([tmp_path], shuffle_buffer=4, epochs=1), 4)
    batches = list(loader)
    assert [len(b) for b in batches] == [4, 4, 4, 3]
    assert sorted(_ids(batches)) == sorted(_key(i) for i in written)
    by_key = {_key(i): i for i in written}
    for b in batches:
        for k, w, lose, c, p in zip(b.pair_ids, b.pixels_w, b.pixels_l, b.categories, b.prompts):
            i = by_key[k]
            assert w.unique().tolist() == [pytest.approx(i / 127.5 - 1)]
            assert lose.unique().tolist() == [pytest.approx((255 - i) / 127.5 - 1)]
            assert (c, p) == (IMAGE_CATS[i % 3], f"prompt {i}")
    assert loader.stats == {**dict.fromkeys(STAT_NAMES, 0), "pairs": 15}


def test_shuffle_is_seeded(tmp_path):
    _shards(tmp_path, 4, 6)
    run = lambda seed: _ids(build_loader(_cfg([tmp_path], shuffle_buffer=5, seed=seed, epochs=1), 4))
    assert run(1) == run(1)
    assert run(1) != run(2) and sorted(run(1)) == sorted(run(2))
    unshuffled = _ids(build_loader(_cfg([tmp_path], shuffle_shards=False, epochs=1), 4))
    assert unshuffled == [_key(i) for i in range(24)]


def test_category_weights_set_the_mix(tmp_path):
    cats = ("aesthetics", "composition", "text_rendering", "portrait_quality")
    _shards(tmp_path, 4, 60, cats=cats)  # 60 of each category
    weights = {"aesthetics": 4.0, "composition": 2.0, "text_rendering": 1.0, "portrait_quality": 0.0}
    loader = build_loader(_cfg([tmp_path], category_weights=weights, shuffle_buffer=16, epochs=8), 32)
    mix = Counter(c for b in loader for c in b.categories)
    total = sum(mix.values())
    assert mix["portrait_quality"] == 0
    for cat, share in (("aesthetics", 4 / 7), ("composition", 2 / 7), ("text_rendering", 1 / 7)):
        assert mix[cat] / total == pytest.approx(share, abs=0.03), mix
    assert mix["aesthetics"] == 8 * 60  # weight at the top: every pair of every epoch
    assert loader.stats["sampled_out"] == 8 * 240 - total


@pytest.mark.parametrize("num_shards,world_size,workers", [(4, 2, 0), (1, 3, 0), (4, 2, 2)])
def test_ranks_and_workers_partition_the_data(tmp_path, num_shards, world_size, workers):
    written = _shards(tmp_path, num_shards, 12 // num_shards)
    per_rank = [
        _ids(build_loader(_cfg([tmp_path], shuffle_buffer=3, epochs=1, num_workers=workers), 2, rank=r, world_size=world_size))
        for r in range(world_size)
    ]
    flat = [k for ids in per_rank for k in ids]
    assert len(flat) == len(set(flat)) == len(written)
    assert set(flat) == {_key(i) for i in written}
    assert all(len(ids) >= 12 // (world_size * max(1, workers)) for ids in per_rank)


# -- resume ----------------------------------------------------------------------------------------
def _resume_case(cfg: TrainDataConfig, n: int, batch_size: int = 3):
    straight = _take(build_loader(cfg, batch_size), 2 * n)
    first = build_loader(cfg, batch_size)
    head = _take(first, n)
    state = json.loads(json.dumps(first.state_dict()))  # a checkpoint is plain JSON
    resumed = build_loader(cfg, batch_size)
    resumed.load_state_dict(state)
    tail = _take(resumed, n)
    assert _ids(straight) == _ids(head + tail)
    for a, b in zip(straight, head + tail):
        assert torch.equal(a.pixels_w, b.pixels_w) and torch.equal(a.pixels_l, b.pixels_l)
    return _ids(straight)


@pytest.mark.parametrize("workers", [0, 2])
def test_shard_resume_continues_exactly_without_decoding_skipped_pairs(tmp_path, monkeypatch, workers):
    _shards(tmp_path, 4, 5, size=(12, 10))
    cfg = _cfg([tmp_path], shuffle_buffer=6, random_crop=True, random_flip=True, num_workers=workers,
               category_weights={"composition": 0.5})
    if workers == 0:  # count decodes in-process (workers would count in their own memory)
        decoded = []
        real = ShardSource.load_pair
        monkeypatch.setattr(ShardSource, "load_pair", lambda self, r: decoded.append(r.key) or real(self, r))
    straight = _resume_case(cfg, n=8)  # 48 pairs: crosses the ~17-pair epochs twice
    if workers == 0:
        # straight run 48 + first half 24 + restored 24 decodes: the restored loader decoded only what it yielded
        assert len(decoded) == 96 and decoded[-24:] == straight[24:]


def test_resume_refuses_another_layout(tmp_path):
    _shards(tmp_path, 2, 3)
    a = build_loader(_cfg([tmp_path]), 2, rank=0, world_size=2)
    _take(a, 1)
    b = build_loader(_cfg([tmp_path]), 2)
    with pytest.raises(ValueError, match="world_size is 2, this loader has 1"):
        b.load_state_dict(a.state_dict())


# -- untrusted input -------------------------------------------------------------------------------
class _Boom:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_malformed_samples_are_skipped_and_named(tmp_path, caplog):
    marker = tmp_path / "unpickled"
    good = [_sample(i, "aesthetics", _flat(10), _flat(20)) for i in range(3)]
    garbage = _sample(3, "aesthetics", b"not an image", _flat(20))
    no_loser = _sample(4, "aesthetics", _flat(10), _flat(20))
    del no_loser["lose.png"]
    bad_cat = _sample(5, "sharpness", _flat(10), _flat(20))
    big = _sample(6, "aesthetics", _flat(10, (64, 64)), _flat(20, (64, 64)))
    video = _sample(7, "motion_quality", b"", b"", ext="mp4", modality="video")
    evil = {**_sample(8, "aesthetics", _flat(10), _flat(20)), "extra.pyd": pickle.dumps(_Boom(str(marker)))}
    shard = _write_shard(tmp_path / "s" / "train-000000.tar", [good[0], garbage, no_loser, good[1], bad_cat, big, video, evil, good[2]])
    with caplog.at_level(logging.WARNING, logger="vipo.trainer.data"):
        loader = build_loader(_cfg([shard.parent], epochs=1, max_pixels=32 * 32), 8)
        ids = _ids(list(loader))
    assert ids == [_key(0), _key(1), _key(8), _key(2)]
    assert not marker.exists()  # the .pyd member was never unpickled
    assert loader.stats == {**dict.fromkeys(STAT_NAMES, 0), "pairs": 4, "malformed": 4, "other_modality": 1}
    text = caplog.text
    for i, why in ((3, "winner png: not a JPEG, PNG or WEBP image"), (4, "no lose."), (5, "category 'sharpness'"), (6, "refused before decoding")):
        assert f"train-000000.tar: {_key(i)}: skipped, " in text and why in text, (i, text)


def test_hostile_json_members_are_skipped_not_fatal(tmp_path, caplog):
    """A sample's json nested 100,000 deep, or not UTF-8, is one skipped sample (never a RecursionError)."""
    good = [_sample(i, "aesthetics", _flat(10), _flat(20)) for i in range(2)]
    deep = {**_sample(2, "aesthetics", _flat(10), _flat(20)), "json": b"[" * 100_000 + b"]" * 100_000}
    latin = {**_sample(3, "aesthetics", _flat(10), _flat(20)), "json": b'{"prompt": "caf\xe9"}'}
    shard = _write_shard(tmp_path / "s" / "train-000000.tar", [good[0], deep, latin, good[1]])
    with caplog.at_level(logging.WARNING, logger="vipo.trainer.data"):
        loader = build_loader(_cfg([shard.parent], epochs=1), 8)
        ids = _ids(list(loader))
    assert ids == [_key(0), _key(1)]
    assert loader.stats["malformed"] == 2
    assert f"{_key(2)}: skipped, json member: JSON nested deeper than 64 levels" in caplog.text
    assert f"{_key(3)}: skipped, json member: not UTF-8 (byte 0xe9 at offset 15)" in caplog.text


def test_truncated_shard_keeps_its_good_samples(tmp_path, caplog):
    _shards(tmp_path, 1, 6)
    path = tmp_path / "train-000000.tar"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 100])
    with caplog.at_level(logging.WARNING, logger="vipo.trainer.data"):
        loader = build_loader(_cfg([path], epochs=1), 8)
        ids = _ids(list(loader))
    assert 1 <= len(ids) < 6 and ids == [_key(i) for i in range(len(ids))]
    assert loader.stats["bad_files"] == 1 and "train-000000.tar" in caplog.text


# -- Pick-a-Pic parquet ----------------------------------------------------------------------------
def _pickapic(path: Path, labels: list, row_group_size: int = 3, offset: int = 0) -> Path:
    """Row r: the preferred image is white with r + offset in its corner, the other black; ties are black."""
    cols = {"caption": [], "jpg_0": [], "jpg_1": [], "label_0": [], "label_1": [], "ranking_id": []}
    for r, label in enumerate(labels):
        imgs = [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8)]
        if label in (0.0, 1.0):
            imgs[0 if label == 1.0 else 1][:] = 255
        for im in imgs:
            im[0, 0] = r + offset
        cols["caption"].append(f"caption {r}")
        cols["jpg_0"].append(encode_image(imgs[0], "png"))
        cols["jpg_1"].append(None if label == "no-image" else encode_image(imgs[1], "png"))
        cols["label_0"].append(label if isinstance(label, float) else 1.0)
        cols["label_1"].append(1 - label if isinstance(label, float) else 0.0)
        cols["ranking_id"].append(r)
    pq.write_table(pa.table(cols), path, row_group_size=row_group_size)
    return path


def test_pickapic_orientation_ties_and_bad_rows(tmp_path, caplog):
    labels = [1.0, 0.0, 0.5, 0.3, 0.0, "no-image", 1.0, 0.5, 0.0]
    path = _pickapic(tmp_path / "pap.parquet", labels)
    with caplog.at_level(logging.WARNING, logger="vipo.trainer.data"):
        loader = build_loader(_cfg([path], source="pickapic", epochs=1, shuffle_shards=False), 4)
        batches = list(loader)
    rows = [int(p.split()[1]) for b in batches for p in b.prompts]
    assert rows == [0, 1, 4, 6, 8]
    for b in batches:
        assert b.categories == [PICKAPIC_CATEGORY] * len(b)
        for w, lose, p in zip(b.pixels_w, b.pixels_l, b.prompts):
            r = int(p.split()[1])
            assert w[:, 0, 0].tolist() == lose[:, 0, 0].tolist() == [pytest.approx(r / 127.5 - 1)] * 3
            assert w[:, 1:, 1:].min().item() == 1.0 and lose[:, 1:, 1:].max().item() == -1.0  # winner = preferred
    assert loader.stats == {**dict.fromkeys(STAT_NAMES, 0), "pairs": 5, "ties": 2, "malformed": 2}
    assert "pap.parquet:3: skipped, label_0 = 0.3" in caplog.text
    assert "pap.parquet:5: skipped, jpg_1 holds no image bytes" in caplog.text
    with pytest.raises(ValueError, match="pap.parquet:2: tie"):
        list(build_loader(_cfg([path], source="pickapic", epochs=1, drop_ties=False, shuffle_shards=False), 4))


def test_pickapic_audit_sample_planted_rows(tmp_path, caplog):
    """The audit's Pick-a-Pic sample (planted bad rows at known positions) reads with the same verdicts."""
    from pipeline.audit.sample import PLANTED, write_sample

    path = tmp_path / "sample.parquet"
    write_sample(path, rows=24)
    with caplog.at_level(logging.WARNING, logger="vipo.trainer.data"):
        loader = build_loader(_cfg([path], source="pickapic", resolution=32, epochs=1, max_pixels=10_000_000), 8)
        n = sum(len(b) for b in loader)
    ties = sum(v == "tie_label" for v in PLANTED.values())
    assert loader.stats == {**dict.fromkeys(STAT_NAMES, 0), "pairs": 24 - len(PLANTED), "ties": ties,
                            "malformed": len(PLANTED) - ties}
    assert n == 24 - len(PLANTED)
    for row in (r for r, why in PLANTED.items() if why != "tie_label"):
        assert f"sample.parquet:{row}: skipped, " in caplog.text
    assert "sample.parquet:5: skipped, jpg_1: image refused before decoding" in caplog.text


def test_pickapic_missing_columns_fail_fast(tmp_path):
    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"caption": ["a"], "jpg_0": [b"x"]}), path)
    with pytest.raises(ValueError, match="other.parquet: not Pick-a-Pic v2 parquet, missing columns \\['jpg_1', 'label_0'\\]"):
        build_loader(_cfg([path], source="pickapic"), 2)


def test_pickapic_resume_and_ranks(tmp_path):
    for f in range(2):
        _pickapic(tmp_path / f"part-{f}.parquet", [1.0, 0.0, 0.5, 1.0, 0.0, 1.0, 0.0], offset=100 * f)
    cfg = _cfg([tmp_path], source="pickapic", shuffle_buffer=4, random_flip=True)
    _resume_case(cfg, n=5, batch_size=2)  # 20 pairs from 12 per epoch
    per_rank = [_ids(build_loader(_cfg([tmp_path], source="pickapic", epochs=1), 1, rank=r, world_size=3)) for r in range(3)]
    flat = [k for ids in per_rank for k in ids]
    assert sorted(flat) == sorted(_ids(build_loader(_cfg([tmp_path], source="pickapic", epochs=1), 1)))
    assert len(set(flat)) == len(flat) == 12 and all(per_rank)


# -- video -----------------------------------------------------------------------------------------
def _clip(levels: np.ndarray, base: int) -> bytes:
    frames = np.stack([np.full((16, 24, 3), base + int(v), np.uint8) for v in levels])
    return encode_video(frames, fps=8.0, crf=0)


def test_video_pairs_sample_the_same_frames(tmp_path):
    levels = np.arange(0, 110, 10)  # 11 frames, brightness steps of 10
    samples = [_sample(i, "motion_quality", _clip(levels, 20), _clip(levels, 120), ext="mp4", modality="video") for i in range(2)]
    shard = _write_shard(tmp_path / "video" / "train-000000.tar", samples)
    cfg = _cfg([shard.parent], modality="video", resolution=16, num_frames=4, random_crop=True, random_flip=True, epochs=1)
    (batch,) = _take(build_loader(cfg, 2), 1)
    assert batch.is_video and batch.pixels_w.shape == (2, 3, 4, 16, 16)
    picks = levels[sample_indices(len(levels), 4)]  # frames 0, 3, 7, 10
    to_level = lambda x: ((x.mean(dim=(0, 2, 3)) + 1) * 127.5).tolist()
    for w, lose in zip(batch.pixels_w, batch.pixels_l):
        assert to_level(w) == pytest.approx((20 + picks).tolist(), abs=3)
        assert to_level(lose) == pytest.approx((120 + picks).tolist(), abs=3)
    with pytest.raises(FileNotFoundError, match="none of the 1 shards holds image pairs"):
        build_loader(_cfg([shard.parent], epochs=1), 2)


def test_mixed_folder_deals_only_shards_of_the_modality(tmp_path):
    levels = np.arange(3)
    video = [_sample(100 + i, "motion_quality", _clip(levels, 0), _clip(levels, 9), ext="mp4", modality="video") for i in range(2)]
    for v in range(2):
        _write_shard(tmp_path / "video" / f"train-{v:06d}.tar", video)
    written = _shards(tmp_path / "image", 2, 3)
    per_rank = [_ids(build_loader(_cfg([tmp_path], epochs=1), 2, rank=r, world_size=2)) for r in range(2)]
    assert all(len(ids) == 3 for ids in per_rank)  # one image shard each, never a video one
    assert sorted(per_rank[0] + per_rank[1]) == sorted(_key(i) for i in written)


def test_a_reader_with_nothing_to_yield_says_so(tmp_path):
    _shards(tmp_path, 1, 3, cats=("composition",))
    with pytest.raises(RuntimeError, match="reader 0 of 1 got no usable pair in epoch 0 .*'sampled_out': 3"):
        list(build_loader(_cfg([tmp_path], category_weights={"composition": 0.0}), 2))
