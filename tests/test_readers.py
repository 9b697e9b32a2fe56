"""The shards load without any vipo code in the three readers docs/dataset_format.md names: webdataset,
Hugging Face `datasets` (its packaged "webdataset" builder) and Ray Data's `read_webdataset`.

What the readers do with our members (checked against their sources, webdataset 1.0, datasets 5.x,
ray 2.60): all three split a member name at its first dot, so `<key>.win.jpg` is the field `win.jpg`;
all decode `json` to a dict and `txt` to a str. Images: webdataset `.decode("pil")` gives PIL images,
`datasets` an `Image` feature (PIL on access), Ray numpy arrays (H, W, 3). Videos: webdataset and Ray
keep `.mp4` bytes; `datasets` makes a `Video` feature, whose decoding needs torchcodec, so the test
reads it with `decode=False` and decodes the bytes with PyAV. Ray reads every file of a folder as a tar,
sidecar parquets and manifest.json included, so a folder is read with `file_extensions=["tar"]`.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

MODALITIES = ("image", "video")


@pytest.fixture(scope="module")
def build_dir(ray_session, vipo_cache, tmp_path_factory) -> Path:
    """A small real build, as `built` in test_build.py. The folder is shared with test_verify.py in the
    same session: a second Build there finds every unit done (shards included) and writes no shard again."""
    from pipeline.build import Build
    from schemas.config import parse_config
    from tests.conftest import small_config

    out = tmp_path_factory.getbasetemp() / "readers-verify-build"
    result = Build(parse_config(small_config(vipo_cache, out))).run()
    assert set(result.manifests) == set(MODALITIES)
    return result.out_dir


def _folder(build_dir: Path, modality: str) -> Path:
    return build_dir / "shards" / modality


def _manifest(build_dir: Path, modality: str) -> dict:
    return json.loads((_folder(build_dir, modality) / "manifest.json").read_text())


def _tars(build_dir: Path, modality: str) -> list[str]:
    """The folder's tars in manifest (= sample) order."""
    return [str(_folder(build_dir, modality) / s["name"]) for s in _manifest(build_dir, modality)["shards"]]


def _sidecar_ids(build_dir: Path, modality: str) -> list[str]:
    ids = []
    for s in _manifest(build_dir, modality)["shards"]:
        ids += pq.read_table(_folder(build_dir, modality) / s["sidecar"], columns=["pair_id"]).column(0).to_pylist()
    return ids


def _frames(mp4: bytes) -> int:
    import av

    with av.open(io.BytesIO(mp4)) as c:
        return sum(1 for _ in c.decode(video=0))


def _check_record(key: str, meta: dict, prompt: str, modality: str) -> None:
    assert isinstance(meta, dict) and meta["pair_id"] == key and meta["modality"] == modality
    assert prompt == meta["prompt"]


@pytest.mark.parametrize("modality", MODALITIES)
def test_webdataset_reads_every_sample(build_dir, modality):
    import webdataset as wds

    samples = list(wds.WebDataset(_tars(build_dir, modality), shardshuffle=False).decode("pil"))
    assert [s["__key__"] for s in samples] == _sidecar_ids(build_dir, modality)
    assert len(samples) == _manifest(build_dir, modality)["num_samples"] > 0
    for s in samples:
        assert isinstance(s["txt"], str)
        _check_record(s["__key__"], s["json"], s["txt"], modality)
        for member, side in (("win", "winner"), ("lose", "loser")):
            rec = s["json"][side]
            if modality == "image":
                img = s[f"{member}.jpg"]
                assert img.size == (rec["width"], rec["height"])
                img.load()
            else:
                assert isinstance(s[f"{member}.mp4"], bytes)
                assert _frames(s[f"{member}.mp4"]) == rec["num_frames"]


@pytest.mark.parametrize("modality", MODALITIES)
def test_hf_datasets_loads_every_sample(build_dir, modality, tmp_path):
    datasets = pytest.importorskip("datasets")

    ds = datasets.load_dataset("webdataset", data_files={"train": _tars(build_dir, modality)}, split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    ext = "jpg" if modality == "image" else "mp4"
    assert ds.num_rows == _manifest(build_dir, modality)["num_samples"]
    assert {"__key__", "json", "txt", f"win.{ext}", f"lose.{ext}"} <= set(ds.column_names)
    assert ds["__key__"] == _sidecar_ids(build_dir, modality)
    if modality == "video":  # datasets' Video feature decodes with torchcodec; read the bytes instead
        for col in ("win.mp4", "lose.mp4"):
            ds = ds.cast_column(col, datasets.Video(decode=False))
    else:
        assert isinstance(ds.features["win.jpg"], datasets.Image)
    for row in ds:
        _check_record(row["__key__"], row["json"], row["txt"], modality)
        for member, side in (("win", "winner"), ("lose", "loser")):
            rec = row["json"][side]
            if modality == "image":
                assert row[f"{member}.jpg"].size == (rec["width"], rec["height"])
            else:
                assert _frames(row[f"{member}.mp4"]["bytes"]) == rec["num_frames"]


@pytest.mark.parametrize("modality", MODALITIES)
def test_ray_data_reads_every_sample(build_dir, modality):
    import numpy as np
    import ray

    ds = ray.data.read_webdataset(str(_folder(build_dir, modality)), file_extensions=["tar"])
    ext = "jpg" if modality == "image" else "mp4"
    assert {"__key__", "json", "txt", f"win.{ext}", f"lose.{ext}"} <= set(ds.columns())
    rows = ds.take_all()
    assert len(rows) == _manifest(build_dir, modality)["num_samples"]
    assert sorted(r["__key__"] for r in rows) == sorted(_sidecar_ids(build_dir, modality))  # blocks may reorder
    for row in rows:
        _check_record(row["__key__"], row["json"], row["txt"], modality)
        for member, side in (("win", "winner"), ("lose", "loser")):
            rec = row["json"][side]
            if modality == "image":
                arr = np.asarray(row[f"{member}.jpg"])
                assert arr.shape == (rec["height"], rec["width"], 3) and arr.dtype == np.uint8
            else:
                assert _frames(row[f"{member}.mp4"]) == rec["num_frames"]


def test_every_sample_json_has_the_same_keys(build_dir):
    """Readers that infer a schema from the first samples (datasets) must see every key there."""
    import webdataset as wds

    def shape(obj):
        if isinstance(obj, dict):
            return {k: shape(v) for k, v in sorted(obj.items())}
        return "null" if obj is None else type(obj).__name__

    for modality in MODALITIES:
        urls = sorted(str(p) for p in _folder(build_dir, modality).glob("*.tar"))
        shapes = {json.dumps(shape(s["json"])) for s in wds.WebDataset(urls, shardshuffle=False).decode()}
        assert len(shapes) == 1, shapes


def test_inspect_summary_matches_the_manifests(build_dir):
    """`vipo inspect` counts from the sidecars alone; they must agree with what the manifests list."""
    from pipeline.summary import summarise

    report = summarise(build_dir)
    assert set(report) == set(MODALITIES)
    for modality, info in report.items():
        manifest = _manifest(build_dir, modality)
        assert info["samples"] == manifest["num_samples"] and info["shards"] == len(manifest["shards"])
        assert info["categories"] == manifest["categories"]
        assert sum(info["generator_pairs"].values()) == manifest["num_samples"]
        assert {f"{k}/5": v for k, v in manifest["agreement"].items()} == info["agreement"]  # "agree/n_scorers", 5 models
