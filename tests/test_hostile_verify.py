"""Hostile input to `cli.py verify` (issue 15, docs/reliability.md "Bad input: audit and verify"): huge
members (sparse on disk), deep JSON in a member and in the manifest, traversal and pickle members, each
run through the real command in a child of its own (the RSS wrapper of test_hostile_audit.py), with
its exact problem lines, exit code 1, no traceback and nothing written."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.formats.bounded import MAX_JSON_DEPTH
from pipeline.media import encode_image
from pipeline.verify import verify_dataset
from schemas.shard import JSON_FIELDS, RECORD_FIELDS
from tests.test_hostile_audit import MEMBERS, RSS_LIMIT_MB, Run, cli, snapshot, sparse_tar

KEYS = [f"{i:016x}" for i in range(4)]
EXPECTED = ["json", "txt", "win.jpg", "lose.jpg"]


def _record(key: str) -> dict:
    side = {f: None for f in RECORD_FIELDS} | {"candidate_id": key, "generator": "tiny-sd15", "seed": 0, "params": "{}",
                                                "width": 8, "height": 8, "num_frames": 1, "scores": {}, "advantages": {}}
    rec = {f: None for f in JSON_FIELDS}
    return rec | {"pair_id": key, "prompt_id": key, "prompt": f"prompt {key}", "category": "aesthetics", "modality": "image",
                  "winner": side, "loser": {**side, "generator": "tiny-sdxl"}, "margins": {}, "agreement": {"agree": 5, "n_scorers": 5},
                  "dataset_version": "vipo-1.0"}


def sound_folder(root: Path, json_of: dict[str, bytes] | None = None, extra: dict[str, list] | None = None,
                 manifest_text: str | None = None) -> Path:
    """A shard folder verify passes (one tar, sidecar, manifest); `json_of[key]` replaces a sample's json,
    `extra[key]` members (bytes, or an int: a sparse hole of that size) follow its own. Returns the tar."""
    folder = root / "shards" / "image"
    folder.mkdir(parents=True)
    jpg = encode_image(np.full((8, 8, 3), 90, np.uint8))
    members: list[tuple[str, bytes | int]] = []
    for key in KEYS:
        own = {"json": (json_of or {}).get(key, json.dumps(_record(key), sort_keys=True).encode()),
               "txt": f"prompt {key}".encode(), "win.jpg": jpg, "lose.jpg": jpg}
        members += [(f"{key}.{s}", own[s]) for s in sorted(own)] + (extra or {}).get(key, [])
    tar = sparse_tar(folder / "train-000000.tar", members)
    side = folder / "train-000000.parquet"
    pq.write_table(pa.table({"pair_id": KEYS, "category": ["aesthetics"] * 4, "winner_generator": ["tiny-sd15"] * 4,
                             "agree": [5] * 4}), side)
    digest = "not computed" if extra else hashlib.sha256(tar.read_bytes()).hexdigest()
    manifest = {"members": EXPECTED, "num_samples": 4, "categories": {"aesthetics": 4}, "winner_generators": {"tiny-sd15": 4},
                "winner_generators_by_category": {"aesthetics": {"tiny-sd15": 4}}, "agreement": {"5": 4},
                "shards": [{"name": tar.name, "samples": 4, "sha256": digest, "sidecar": side.name,
                            "sidecar_sha256": hashlib.sha256(side.read_bytes()).hexdigest()}]}
    (folder / "manifest.json").write_text(manifest_text if manifest_text is not None else json.dumps(manifest))
    return tar


def verify(work: Path, root: Path) -> tuple[Run, list[str]]:
    """`cli.py verify root` in its own child: (the run, its problem lines), nothing written anywhere under `work`."""
    (work / "cwd").mkdir(exist_ok=True)
    before = snapshot(work, work / "nothing")
    run = cli(work, "verify", str(root), timeout=300)
    assert run.killed is None and "Traceback" not in run.out, run.out[-3000:]
    assert snapshot(work, work / "nothing") == before and not list((work / "cwd").iterdir())
    return run, [ln for ln in run.out.splitlines() if ln.startswith(str(root))]


def test_the_sound_folder_verifies(tmp_path):
    sound_folder(tmp_path / "d")
    assert verify_dataset(tmp_path / "d") == []


@pytest.mark.parametrize("case", ["ten_wins", "two_gib"])
def test_huge_extra_members_are_named_never_read(tmp_path, case):
    key = KEYS[1]
    extra = [(f"{key}.win.{i}.jpg", 100 << 20) for i in range(10)] if case == "ten_wins" else [(f"{key}.extra.bin", 2 << 30)]
    tar = sound_folder(tmp_path / "d", extra={key: extra})
    run, problems = verify(tmp_path, tmp_path / "d")
    names = sorted(n.partition(".")[2] for n, _ in extra)
    assert run.rc == 1 and problems == [
        f"{tar}: sha256 differs from manifest.json",
        *[f"{tar}: sample {key}: member {n!r} is not part of the shard format (its members are {MEMBERS}); not read" for n, _ in extra],
        f"{tar}: sample {key}: members {sorted(EXPECTED + names)}, expected {sorted(EXPECTED)}",
    ], run.out[-3000:]
    assert run.maxrss_mb < RSS_LIMIT_MB, run.maxrss_mb


def test_deep_json_in_a_member_is_a_problem_not_a_crash(tmp_path):
    key = KEYS[2]
    tar = sound_folder(tmp_path / "d", json_of={key: b"[" * 100_000 + b"]" * 100_000})
    run, problems = verify(tmp_path, tmp_path / "d")
    side, manifest = tar.with_suffix(".parquet"), tar.parent / "manifest.json"
    assert run.rc == 1 and problems == [
        f"{tar}: sample {key}: json does not parse (JSON nested deeper than {MAX_JSON_DEPTH} levels)",
        f"{side}: row 2 ({key}): category 'aesthetics' but {tar.name}'s json says None",
        f"{side}: row 2 ({key}): winner_generator 'tiny-sd15' but {tar.name}'s json says None",
        f"{side}: row 2 ({key}): agree 5 but {tar.name}'s json says None",
        f"{manifest}: categories: aesthetics: 4, but the shards hold 3 and the sidecars 4",
        f"{manifest}: winner_generators: tiny-sd15: 4, but the shards hold 3 and the sidecars 4",
        f"{manifest}: agreement: 5: 4, but the shards hold 3 and the sidecars 4",
        f"{manifest}: winner_generators_by_category: aesthetics/tiny-sd15: 4, but the shards hold 3 and the sidecars 4",
    ], run.out[-3000:]


@pytest.mark.parametrize("depth", [100_000, MAX_JSON_DEPTH + 1])
def test_deep_json_in_the_manifest_is_one_problem(tmp_path, depth):
    text = "[" * depth + "]" * depth if depth > MAX_JSON_DEPTH else '{"members": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"
    tar = sound_folder(tmp_path / "d", manifest_text=text)
    run, problems = verify(tmp_path, tmp_path / "d")
    assert run.rc == 1 and problems == [f"{tar.parent / 'manifest.json'}: does not parse (JSON nested deeper than {MAX_JSON_DEPTH} levels)"]


def test_a_traversal_member_makes_the_tar_unreadable_and_a_pickle_is_never_loaded(tmp_path):
    import pickle

    key = KEYS[3]
    tar = sound_folder(tmp_path / "a", extra={key: [(f"../{key}.json", b"{}")]})
    run, problems = verify(tmp_path, tmp_path / "a")
    assert run.rc == 1 and f"{tar}: unreadable tar (member '../{key}.json' is not a relative name inside the shard)" in problems

    class Boom:
        def __reduce__(self):
            return (Path(tmp_path / "unpickled").touch, ())

    tar = sound_folder(tmp_path / "b", extra={key: [(f"{key}.pickle", pickle.dumps(Boom()))]})
    run, problems = verify(tmp_path, tmp_path / "b")
    assert run.rc == 1 and problems[1:] == [
        f"{tar}: sample {key}: member '{key}.pickle' is not part of the shard format (its members are {MEMBERS}); not read",
        f"{tar}: sample {key}: members {sorted(EXPECTED + ['pickle'])}, expected {sorted(EXPECTED)}",
    ], run.out[-3000:]
    assert not (tmp_path / "unpickled").exists()


def test_the_folder_here_has_the_contracts_members():
    from schemas.shard import member_names

    assert sorted(EXPECTED) == sorted(member_names("image", "jpg"))
