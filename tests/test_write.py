"""The shard writer on synthetic tables: records built columnar (extra `*_advantage` columns of the scores
schema included), bytes independent of how many tasks run at once, the in-flight bound, sidecars and the
manifest's per-category winner counts, and a clear error for a pair whose candidate is missing."""
from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.media import encode_image
from pipeline.write import _run_bounded, advantage_columns, write_shards
from schemas.tables import (
    CANDIDATES,
    REWARD_MODEL_NAMES,
    scores_schema,
    selected_schema,
)

SCORERS = list(REWARD_MODEL_NAMES)
GENERATORS = ("sd15", "sdxl", "sdxl", "flux-dev")  # winner i is made by GENERATORS[i % 4]
CATEGORIES = ("aesthetics", "composition", "composition")  # pair i is of CATEGORIES[i % 3]


def _table(schema: pa.Schema, n: int, columns: dict) -> pa.Table:
    """`columns` given, every other field of the schema null."""
    return pa.table({f.name: columns.get(f.name, pa.nulls(n, f.type)) for f in schema}, schema=schema)


def _inputs(tmp: Path, n_pairs: int, combined: bool) -> tuple[pa.Table, pa.Table, pa.Table]:
    rng = np.random.default_rng(0)
    (tmp / "media").mkdir(parents=True, exist_ok=True)
    n = 2 * n_pairs
    cids = [f"{i:016x}" for i in range(n)]
    for i in range(n):
        (tmp / "media" / f"{i}.jpg").write_bytes(encode_image(rng.integers(0, 255, (8, 8 + i % 3, 3), dtype=np.uint8)))
    generators = [GENERATORS[i % 4] if i < n_pairs else "sd15" for i in range(n)]
    candidates = _table(CANDIDATES, n, {
        "candidate_id": pa.array(cids), "generator": pa.array(generators), "seed": pa.array(range(n), pa.int64()),
        "params": pa.array(['{"steps":2}'] * n), "media_path": pa.array([f"{i}.jpg" for i in range(n)]),
        "width": pa.array([8 + i % 3 for i in range(n)], pa.int32()), "height": pa.array([8] * n, pa.int32()),
        "num_frames": pa.array([1] * n, pa.int32()), "status": pa.array(["ok"] * n),
    })
    schema = scores_schema(SCORERS)  # carries combined_advantage; older builds' tables do not
    if not combined:
        schema = schema.remove(schema.get_field_index("combined_advantage"))
    values = {"candidate_id": pa.array(cids)}
    for f in schema.names[4:]:
        values[f] = pa.array(rng.normal(size=n).astype(np.float32))
    scores = _table(schema, n, values)
    selected = _table(selected_schema(SCORERS), n_pairs, {
        "pair_id": pa.array([f"{i:015x}a" for i in range(n_pairs)]), "prompt_id": pa.array(["p"] * n_pairs),
        "prompt": pa.array([f"prompt {i}" for i in range(n_pairs)]), "category": pa.array([CATEGORIES[i % 3] for i in range(n_pairs)]),
        "modality": pa.array(["image"] * n_pairs), "winner_id": pa.array(cids[:n_pairs]), "loser_id": pa.array(cids[n_pairs:]),
        "agree": pa.array([5] * n_pairs, pa.int32()), "n_scorers": pa.array([5] * n_pairs, pa.int32()),
        "split": pa.array(["train"] * n_pairs), "order": pa.array(rng.permutation(n_pairs), pa.int64()),
        **{f"margin_{s}": pa.array(rng.random(n_pairs).astype(np.float32)) for s in SCORERS},
    })
    return selected, candidates, scores


def _write(tmp: Path, tables, out: str, **kw) -> dict:
    return write_shards(*tables, out_dir=str(tmp / out), media_root=str(tmp / "media"), scorers=SCORERS,
                        score_cols=SCORERS, image_format="jpg", samples_per_shard=4, name="t", **kw)


def _samples(folder: Path) -> list[dict]:
    out = []
    for tar_path in sorted(folder.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            out += [json.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json")]
    return out


def test_advantages_follow_the_scores_schema():
    schema = scores_schema(["pickscore"])
    assert advantage_columns(schema, ["pickscore"]) == {"pickscore": "pickscore_advantage", "combined": "combined_advantage"}
    without = schema.remove(schema.get_field_index("combined_advantage"))
    assert advantage_columns(without, ["pickscore"]) == {"pickscore": "pickscore_advantage"}


def test_shards_carry_every_pair_in_order_with_its_records(ray_session, tmp_path):
    tables = _inputs(tmp_path, 10, combined=True)
    selected, _, scores = tables
    manifest = _write(tmp_path, tables, "a")["image"]
    folder = tmp_path / "a" / "shards" / "image"
    samples = _samples(folder)
    by_order = selected.sort_by("order")
    assert [s["pair_id"] for s in samples] == by_order["pair_id"].to_pylist()
    row = {c: scores[c].to_pylist() for c in scores.column_names}
    at = {cid: i for i, cid in enumerate(row["candidate_id"])}
    for s in samples:
        win = s["winner"]
        assert set(win["advantages"]) == {*SCORERS, "combined"}
        assert win["advantages"]["combined"] == row["combined_advantage"][at[win["candidate_id"]]]  # float32, exact
        assert win["scores"]["pickscore"] == row["pickscore"][at[win["candidate_id"]]]
        assert win["params"] == '{"steps":2}' and win["fps"] is None and isinstance(win["width"], int)
    assert [s["samples"] for s in manifest["shards"]] == [4, 4, 2]
    side = pq.read_table(folder / "train-000001.parquet")
    assert side["pair_id"].to_pylist() == by_order["pair_id"].to_pylist()[4:8]
    assert "order" not in side.column_names and set(side["shard"].to_pylist()) == {"train-000001.tar"}
    # winners 0..9 are GENERATORS[i % 4] and of CATEGORIES[i % 3]
    want = Counter((CATEGORIES[i % 3], GENERATORS[i % 4]) for i in range(10))
    got = Counter({(c, g): n for c, gs in manifest["winner_generators_by_category"].items() for g, n in gs.items()})
    assert got == want and manifest["winner_generators"] == {"flux-dev": 2, "sd15": 3, "sdxl": 5}
    assert not list(folder.glob(".*.tmp"))  # every file landed by rename, no temp file left
    # a later build of the folder removes what a killed one left: shards past its count, temp files
    (folder / "train-000007.tar").write_bytes(b"old")
    (folder / ".train-000000.tar.0123456789abcdef.tmp").write_bytes(b"partial")
    assert _write(tmp_path, tables, "a")["image"] == manifest
    assert sorted(p.name for p in folder.iterdir()) == [
        "manifest.json", *(f"train-{i:06d}.{ext}" for i in range(3) for ext in ("parquet", "tar"))]


def test_bytes_do_not_depend_on_tasks_in_flight(ray_session, tmp_path):
    tables = _inputs(tmp_path, 10, combined=False)
    one, many = _write(tmp_path, tables, "one", max_in_flight=1), _write(tmp_path, tables, "many", max_in_flight=8)
    assert one == many
    for name in ("one", "many"):
        assert set(_samples(tmp_path / name / "shards" / "image")[0]["winner"]["advantages"]) == set(SCORERS)
    files = lambda d: {p.name: p.read_bytes() for p in (tmp_path / d / "shards" / "image").iterdir()}
    assert files("one") == files("many")


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_at_most_limit_tasks_are_in_flight(ray_session, limit):
    import ray

    @ray.remote
    def slow(i: int) -> dict:
        import time

        time.sleep(0.02 * (i % 3))
        return {"i": i}

    submitted = []

    def submit(i: int):
        if submitted:  # the runner waits before submitting past the limit: at most limit - 1 still running
            ready, _ = ray.wait(submitted, num_returns=len(submitted), timeout=0)
            assert len(submitted) - len(ready) <= limit - 1
        submitted.append(slow.remote(i))
        return submitted[-1]

    assert _run_bounded(submit, 7, limit) == [{"i": i} for i in range(7)]


def test_a_pair_naming_an_unknown_candidate_is_refused(ray_session, tmp_path):
    selected, candidates, scores = _inputs(tmp_path, 3, combined=False)
    ids = selected["loser_id"].to_pylist()
    ids[1] = "ffffffffffffffff"
    selected = selected.set_column(selected.schema.get_field_index("loser_id"), "loser_id", pa.array(ids))
    with pytest.raises(ValueError, match=rf"selected pair {selected['pair_id'][1]}: loser_id ffffffffffffffff is not in the candidates table"):
        _write(tmp_path, (selected, candidates, scores), "bad")


def test_media_bytes_are_copied_unchanged(ray_session, tmp_path):
    tables = _inputs(tmp_path, 3, combined=False)
    _write(tmp_path, tables, "m")
    tar_path = tmp_path / "m" / "shards" / "image" / "train-000000.tar"
    with tarfile.open(tar_path) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
        assert all(m.mtime == 0 and m.uname == "vipo" and m.mode == 0o444 for m in tar.getmembers())
    for key in tables[0]["pair_id"].to_pylist():
        meta = json.loads(members[f"{key}.json"])
        win_index = int(meta["winner"]["candidate_id"], 16)
        assert members[f"{key}.win.jpg"] == (tmp_path / "media" / f"{win_index}.jpg").read_bytes()
        assert members[f"{key}.txt"].decode() == meta["prompt"]


def test_tars_are_what_webdatasets_own_writer_makes(ray_session, tmp_path):
    """The writer uses the standard library only; its bytes equal webdataset's TarWriter on the same samples."""
    import webdataset as wds

    _write(tmp_path, _inputs(tmp_path, 5, combined=False), "w")
    for tar_path in sorted((tmp_path / "w" / "shards" / "image").glob("*.tar")):
        samples: dict[str, dict[str, bytes]] = {}
        with tarfile.open(tar_path) as tar:
            for m in tar:
                key, _, suffix = m.name.partition(".")
                samples.setdefault(key, {"__key__": key})[suffix] = tar.extractfile(m).read()
        buf = io.BytesIO()
        with wds.TarWriter(buf, user="vipo", group="vipo", mode=0o444, mtime=0) as sink:
            for sample in samples.values():
                sink.write(sample)
        assert buf.getvalue() == tar_path.read_bytes()
