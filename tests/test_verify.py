"""`verify` on a copy of a small real build, tampered one way per test: manifest counts (per category,
generator and both), sidecars, quotas and the winner-generator cap in the copied config.yaml, members, media
(corrupt and oversized), and the prefix balance of a shard folder."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.verify import balance_report, prefix_problems, verify_dataset
from tests.conftest import REPO


@pytest.fixture(scope="module")
def build_dir(ray_session, vipo_cache, tmp_path_factory) -> Path:
    """A small real build, as `built` in test_build.py; the folder is shared with test_readers.py in the
    same session (a second Build there finds every unit done and rewrites no shard)."""
    from pipeline.build import Build
    from schemas.config import parse_config
    from tests.conftest import small_config

    out = tmp_path_factory.getbasetemp() / "readers-verify-build"
    return Build(parse_config(small_config(vipo_cache, out))).run().out_dir


@pytest.fixture
def copy(build_dir, tmp_path) -> Path:
    """The build's shards (tars, sidecars, manifests) and config.yaml, copied to tamper with."""
    root = tmp_path / "copy"
    shutil.copytree(build_dir / "shards", root / "shards")
    shutil.copy2(build_dir / "config.yaml", root / "config.yaml")
    return root


def _image_tar(root: Path) -> Path:
    return min((root / "shards" / "image").glob("*.tar"))


def _members(tar_path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(tar_path) as tar:
        return [(info, tar.extractfile(info).read()) for info in tar if info.isfile()]


def _rewrite_tar(tar_path: Path, edit) -> None:
    """Rewrite a tar member by member: `edit(name, data)` returns the new bytes, or None to drop it."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for info, data in _members(tar_path):
            data = edit(info.name, data)
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    tar_path.write_bytes(out.getvalue())


def _first_key(tar_path: Path) -> str:
    return _members(tar_path)[0][0].name.partition(".")[0]


def _edit_config(root: Path, category: str, quota) -> Path:
    path = root / "config.yaml"
    data = yaml.safe_load(path.read_text())
    data["categories"][category]["quota"] = quota
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _cli_verify(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "cli.py"), "verify", str(root)], capture_output=True, text=True, check=False)


def test_the_copy_verifies_with_no_warnings(copy):
    assert verify_dataset(copy) == []
    assert balance_report(copy) == []  # the small build fills every quota
    assert verify_dataset(copy / "shards") == []  # the shards folder finds config.yaml in its parent


@pytest.mark.parametrize(("field", "key"), [("categories", "aesthetics"), ("winner_generators", "tiny-sd15"), ("agreement", None)])
def test_an_altered_manifest_count_names_the_manifest_and_key(copy, field, key):
    path = copy / "shards" / "image" / "manifest.json"
    manifest = json.loads(path.read_text())
    key = key or min(manifest[field])
    manifest[field][key] += 1
    path.write_text(json.dumps(manifest))
    problems = verify_dataset(copy)
    assert any(p.startswith(f"{path}: {field}: {key}: ") and "sidecars" in p for p in problems), problems


def test_a_quota_below_the_selected_count_is_a_problem(copy):
    config = _edit_config(copy, "aesthetics", 1)
    problems = verify_dataset(copy)
    assert problems == [f"{config}: categories: aesthetics: quota 1, but the shards hold 2 of its samples"]
    proc = _cli_verify(copy)
    assert proc.returncode == 1 and "aesthetics: quota 1" in proc.stdout


def test_a_quota_above_the_selected_count_is_only_a_warning(copy):
    config = _edit_config(copy, "motion_quality", 5)
    assert verify_dataset(copy) == []
    assert balance_report(copy) == [f"warning: {config}: categories: motion_quality: 2 of its quota 5 selected (short by 3)"]
    assert _cli_verify(copy).returncode == 0


def _set_cap(root: Path, share) -> Path:
    path = root / "config.yaml"
    data = yaml.safe_load(path.read_text())
    data["selection"] = {"max_winner_generator_share": share}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_a_single_generator_category_is_not_capped(copy):
    """Each category of the small build has one generator, winning all its pairs: 1/1 is its cap."""
    _set_cap(copy, 0.5)
    assert verify_dataset(copy) == []


def _capped_folder(build_dir: Path, root: Path, share, winners: list[str], losers: list[str]) -> Path:
    """A folder of len(winners) aesthetics pairs and a config.yaml with the cap `share`."""
    _write_folder(root / "shards" / "image", _template(build_dir), ["aesthetics"] * len(winners), winners=winners, losers=losers)
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump({"categories": {"aesthetics": {"quota": len(winners), "prompts": 4}},
                                      "selection": {"max_winner_generator_share": share}}))
    return config


def test_a_generator_over_the_cap_is_a_problem(build_dir, tmp_path):
    winners, losers = ["sd15"] * 6 + ["sdxl"] * 2, ["sdxl"] * 6 + ["sd15"] * 2
    config = _capped_folder(build_dir, tmp_path / "a", 0.5, winners, losers)
    assert verify_dataset(tmp_path / "a") == [
        f"{config}: selection: max_winner_generator_share 0.5: sd15 won 6 of the 8 aesthetics pairs, at most 4 allowed"]
    proc = _cli_verify(tmp_path / "a")
    assert proc.returncode == 1 and "sd15 won 6 of the 8 aesthetics pairs" in proc.stdout
    assert balance_report(tmp_path / "a") == []  # a cap breach is a problem, never only a warning
    # a share below 1/k is raised to 1/k for the k generators a category's pairs show, as select does
    config = _capped_folder(build_dir, tmp_path / "b", 0.3, winners, losers)
    assert verify_dataset(tmp_path / "b") == [
        (f"{config}: selection: max_winner_generator_share 0.3 (1/2 for the 2 generators in its pairs): sd15 won 6 of "
         "the 8 aesthetics pairs, at most 4 allowed")]
    _capped_folder(build_dir, tmp_path / "c", 0.75, winners, losers)  # floor(0.75 * 8) = 6
    assert verify_dataset(tmp_path / "c") == []
    # three generators in the pairs (flux-dev only ever loses): the cap stays 0.4, floor(0.4 * 8) = 3
    config = _capped_folder(build_dir, tmp_path / "d", 0.4, ["sd15"] * 3 + ["sdxl"] * 5, ["flux-dev"] * 8)
    assert verify_dataset(tmp_path / "d") == [
        f"{config}: selection: max_winner_generator_share 0.4: sdxl won 5 of the 8 aesthetics pairs, at most 3 allowed"]


@pytest.mark.parametrize("share", [1.0, 1, None])
def test_a_cap_the_shards_keep_or_no_cap_is_no_problem(copy, share):
    _set_cap(copy, share)
    assert verify_dataset(copy) == []


@pytest.mark.parametrize("share", [0, 1.5, "half", True])
def test_a_bad_cap_is_a_problem(copy, share):
    config = _set_cap(copy, share)
    assert verify_dataset(copy) == [
        f"{config}: selection: max_winner_generator_share: must be a number in (0, 1], got {share!r}"]


def test_an_altered_per_category_generator_count_names_the_manifest_and_key(copy):
    path = copy / "shards" / "image" / "manifest.json"
    manifest = json.loads(path.read_text())
    assert manifest["winner_generators_by_category"] == {"aesthetics": {"tiny-sd15": 2}}
    manifest["winner_generators_by_category"]["aesthetics"]["tiny-sd15"] = 3
    path.write_text(json.dumps(manifest))
    assert verify_dataset(copy) == [
        f"{path}: winner_generators_by_category: aesthetics/tiny-sd15: 3, but the shards hold 2 and the sidecars 2"]


def test_a_sidecar_generator_that_disagrees_with_the_json_and_manifest_is_a_problem(copy):
    side = min((copy / "shards" / "image").glob("*.parquet"))
    rows = pq.read_table(side).to_pylist()
    rows[0]["winner_generator"] = "sdxl"
    pq.write_table(pa.Table.from_pylist(rows), side)
    problems = verify_dataset(copy)
    manifest = copy / "shards" / "image" / "manifest.json"
    pid = rows[0]["pair_id"]
    assert f"{side}: row 0 ({pid}): winner_generator 'sdxl' but {side.stem}.tar's json says 'tiny-sd15'" in problems
    assert f"{manifest}: winner_generators: sdxl: 0, but the shards hold 0 and the sidecars 1" in problems
    assert f"{manifest}: winner_generators_by_category: aesthetics/tiny-sd15: 2, but the shards hold 2 and the sidecars 1" in problems


def test_a_bad_config_is_reported_and_never_executed(copy, tmp_path):
    _edit_config(copy, "aesthetics", "many")
    assert any("categories: aesthetics: quota: must be a positive integer" in p for p in verify_dataset(copy))
    marker = tmp_path / "executed"
    (copy / "config.yaml").write_text(f"categories: !!python/object/apply:os.system ['touch {marker}']\n")
    problems = verify_dataset(copy)
    assert any("config.yaml: does not parse" in p for p in problems) and not marker.exists()


def test_a_category_missing_from_the_config_is_a_problem(copy):
    path = copy / "config.yaml"
    data = yaml.safe_load(path.read_text())
    del data["categories"]["aesthetics"]
    path.write_text(yaml.safe_dump(data))
    assert verify_dataset(copy) == [f"{path}: categories: no 'aesthetics', but the shards hold 2 of its samples"]


def test_a_removed_member_names_the_shard_and_sample(copy):
    tar = _image_tar(copy)
    key = _first_key(tar)
    _rewrite_tar(tar, lambda name, data: None if name == f"{key}.lose.jpg" else data)
    problems = verify_dataset(copy)
    assert any(p.startswith(f"{tar}: sample {key}: members") and "lose.jpg" in p for p in problems), problems


def test_a_corrupt_jpeg_is_a_problem(copy):
    tar = _image_tar(copy)
    key = _first_key(tar)
    _rewrite_tar(tar, lambda name, data: data[: len(data) // 3] if name == f"{key}.win.jpg" else data)
    problems = verify_dataset(copy)
    assert any(p.startswith(f"{tar}: sample {key}: win.jpg does not decode") for p in problems), problems


def _claim_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The same JPEG with its frame header (SOF0/SOF2) claiming width x height."""
    at = max(jpeg.find(b"\xff\xc0"), jpeg.find(b"\xff\xc2"))
    assert at > 0
    out = bytearray(jpeg)
    out[at + 5 : at + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(out)


@pytest.mark.parametrize("side", [9000, 65000])  # over verify's 64 MP limit; and over PIL's own bomb guard
def test_an_image_claiming_huge_dimensions_is_refused_before_decoding(copy, monkeypatch, side):
    from PIL import ImageFile

    tar = _image_tar(copy)
    key = _first_key(tar)
    _rewrite_tar(tar, lambda name, data: _claim_size(data, side, side) if name == f"{key}.lose.jpg" else data)
    loaded = []
    real_load = ImageFile.ImageFile.load

    def spy(self):
        loaded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    problems = verify_dataset(copy)
    assert any(p.startswith(f"{tar}: sample {key}: lose.jpg does not decode") and "refused before decoding" in p for p in problems), problems
    assert loaded and (side, side) not in loaded  # the other images were decoded, this one never


def test_a_manifest_naming_a_file_outside_its_folder_is_refused(copy):
    path = copy / "shards" / "image" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["shards"][0]["name"] = "../../config.yaml"
    path.write_text(json.dumps(manifest))
    assert any("is not a plain file name" in p for p in verify_dataset(copy))


# Prefix balance. The small build has one category per folder, so these folders are made from its
# image samples: same media, new keys and categories, written with their own sidecars and manifest.


def _write_folder(folder: Path, template: dict[str, bytes], categories: list[str], per_shard: int = 4,
                  winners: list[str] | None = None, losers: list[str] | None = None) -> None:
    """Sample i of `categories[i]`, won by `winners[i]` over `losers[i]` (default: the template's generators)."""
    folder.mkdir(parents=True)
    base = json.loads(template["json"])
    winners = winners or [base["winner"]["generator"]] * len(categories)
    losers = losers or [base["loser"]["generator"]] * len(categories)
    shards = []
    for index, start in enumerate(range(0, len(categories), per_shard)):
        rows, buf = [], io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for i in range(start, min(start + per_shard, len(categories))):
                key = f"{i:016x}"
                meta = {**base, "pair_id": key, "category": categories[i],
                        "winner": {**base["winner"], "generator": winners[i]}, "loser": {**base["loser"], "generator": losers[i]}}
                members = {**template, "json": json.dumps(meta, sort_keys=True).encode()}
                for suffix in sorted(members):
                    info = tarfile.TarInfo(f"{key}.{suffix}")
                    info.size = len(members[suffix])
                    tar.addfile(info, io.BytesIO(members[suffix]))
                rows.append({"pair_id": key, "category": categories[i], "winner_generator": winners[i],
                             "agree": base["agreement"]["agree"]})
        name, sidecar = f"train-{index:06d}.tar", f"train-{index:06d}.parquet"
        (folder / name).write_bytes(buf.getvalue())
        pq.write_table(pa.Table.from_pylist(rows), folder / sidecar)
        shards.append({"name": name, "samples": len(rows), "sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
                       "sidecar": sidecar, "sidecar_sha256": hashlib.sha256((folder / sidecar).read_bytes()).hexdigest()})
    manifest = {
        "members": ["json", "txt", "win.jpg", "lose.jpg"],
        "num_samples": len(categories),
        "categories": dict(Counter(categories)),
        "winner_generators": dict(Counter(winners)),
        "agreement": {str(base["agreement"]["agree"]): len(categories)},
        "shards": shards,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _template(build_dir: Path) -> dict[str, bytes]:
    key = _first_key(_image_tar(build_dir))
    return {info.name.partition(".")[2]: data for info, data in _members(_image_tar(build_dir)) if info.name.startswith(key)}


def test_an_interleaved_folder_passes_and_a_sorted_one_is_a_problem(build_dir, tmp_path):
    template = _template(build_dir)
    interleaved, grouped = tmp_path / "interleaved", tmp_path / "grouped"
    _write_folder(interleaved / "shards" / "image", template, ["aesthetics", "composition"] * 8)
    assert verify_dataset(interleaved) == []
    _write_folder(grouped / "shards" / "image", template, ["aesthetics"] * 8 + ["composition"] * 8)
    problems = verify_dataset(grouped)
    folder = grouped / "shards" / "image"
    assert problems == [
        f"{folder}: the first 8 of 16 samples hold 8 aesthetics samples; with 8 of 16 in the folder an interleaved order holds 3 to 5 (samples are not interleaved across categories)",
        f"{folder}: the first 8 of 16 samples hold 0 composition samples; with 8 of 16 in the folder an interleaved order holds 3 to 5 (samples are not interleaved across categories)",
    ]


def test_a_sidecar_that_disagrees_with_the_json_is_a_problem(build_dir, tmp_path):
    folder = tmp_path / "d" / "shards" / "image"
    _write_folder(folder, _template(build_dir), ["aesthetics", "composition"] * 2)
    side = folder / "train-000000.parquet"
    table = pq.read_table(side).to_pylist()
    table[0]["category"] = "composition"
    pq.write_table(pa.Table.from_pylist(table), side)
    problems = verify_dataset(tmp_path / "d")
    assert any(p.startswith(f"{side}: row 0 (0000000000000000): category 'composition' but train-000000.tar's json says 'aesthetics'") for p in problems)
    assert any(p.startswith(f"{folder / 'manifest.json'}: categories: aesthetics: 2, but the shards hold 2 and the sidecars 1") for p in problems)


def test_prefix_bounds_never_trip_on_the_select_stage_order():
    """The bounds follow from select's interleaving; random category mixes and seeds never trip them."""
    import numpy as np
    import pandas as pd

    from pipeline.select import _interleave_key

    rng = np.random.default_rng(0)
    for _ in range(300):
        sizes = rng.integers(1, 80, size=rng.integers(1, 9))
        cats = np.repeat([f"c{i}" for i in range(len(sizes))], sizes)
        df = pd.DataFrame({"category": cats, "pair_id": [f"{i:016x}" for i in range(len(cats))]})
        df["_key"] = _interleave_key(df, int(rng.integers(0, 1 << 30)))
        order = df.sort_values(["_key", "pair_id"], kind="stable")["category"].tolist()
        assert prefix_problems("f", order) == [], (sizes, order)
    assert prefix_problems("f", ["a"] * 4 + ["b"] * 4)  # grouped, not interleaved
