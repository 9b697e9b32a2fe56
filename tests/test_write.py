"""The write stage on synthetic tables: records built columnar (extra `*_advantage` columns of the scores
schema included) and carried by the selected table, samples in (sort_key, pair_id) order, bytes that are the
same whether the shard units run in this process or as Ray tasks, sidecars and the manifest's per-category
winner counts, resume and stale-file cleanup, and a clear error for a pair whose record is missing."""
from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.catalogue import Table
from pipeline.executor import Executor
from pipeline.media import encode_image
from pipeline.records import advantage_columns, record_table
from pipeline.write import ShardStage
from schemas.tables import (
    CANDIDATES,
    REWARD_MODEL_NAMES,
    SHARD_INDEX,
    scores_schema,
    selected_schema,
)
from schemas.units import UnitStats

SCORERS = list(REWARD_MODEL_NAMES)
GENERATORS = ("sd15", "sdxl", "sdxl", "flux-dev")  # winner i is made by GENERATORS[i % 4]
CATEGORIES = ("aesthetics", "composition", "composition")  # pair i is of CATEGORIES[i % 3]


def _table(schema: pa.Schema, n: int, columns: dict) -> pa.Table:
    """`columns` given, every other field of the schema null."""
    return pa.table({f.name: columns.get(f.name, pa.nulls(n, f.type)) for f in schema}, schema=schema)


def _inputs(tmp: Path, n_pairs: int, combined: bool) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(selected, candidates, scores); the selected rows carry their winner / loser records as the select
    stage makes them, and their sort keys repeat (quarters), so the pair id breaks the ties."""
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
        if f != "reason":  # null: every candidate scored
            values[f] = pa.array(rng.normal(size=n).astype(np.float32))
    scores = _table(schema, n, values)
    records = record_table(candidates, scores, SCORERS, pa.array(cids))
    at = {c: i for i, c in enumerate(records["candidate_id"].to_pylist())}
    rec = records["record"].to_pylist()
    selected = _table(selected_schema(SCORERS), n_pairs, {
        "pair_id": pa.array([f"{i:015x}a" for i in range(n_pairs)]), "prompt_id": pa.array(["p"] * n_pairs),
        "prompt": pa.array([f"prompt {i}" for i in range(n_pairs)]), "category": pa.array([CATEGORIES[i % 3] for i in range(n_pairs)]),
        "modality": pa.array(["image"] * n_pairs), "winner_id": pa.array(cids[:n_pairs]), "loser_id": pa.array(cids[n_pairs:]),
        "agree": pa.array([5] * n_pairs, pa.int32()), "n_scorers": pa.array([5] * n_pairs, pa.int32()),
        "split": pa.array(["train"] * n_pairs), "sort_key": pa.array(rng.integers(0, 4, n_pairs) / 4, pa.float64()),
        "winner_record": pa.array([rec[at[c]] for c in cids[:n_pairs]]), "loser_record": pa.array([rec[at[c]] for c in cids[n_pairs:]]),
        **{f"margin_{s}": pa.array(rng.random(n_pairs).astype(np.float32)) for s in SCORERS},
    })
    return selected, candidates, scores


def _stage(tmp: Path, selected: pa.Table, out: str, engine: str = "local") -> ShardStage:
    """The write stage of a build folder `out` whose selected table holds `selected` (one unit per
    category, as the select stage writes it)."""
    root = tmp / out
    table = Table(str(root / "selected"), selected_schema(SCORERS), cluster_by="category")
    for cat in sorted(set(selected["category"].to_pylist())):
        rows = selected.filter(pc.equal(selected["category"], cat))
        table.write_unit(f"select-{cat}", rows, UnitStats(n_in=rows.num_rows, n_out=rows.num_rows))
    return ShardStage(
        selected=table, shard_index=Table(str(root / "shard_index"), SHARD_INDEX, cluster_by="modality"),
        out_dir=str(root), media_root=str(tmp / "media"), scorers=tuple(SCORERS), image_format="jpg",
        samples_per_shard=4, dataset_name="t", engine=engine, use_ray=engine == "ray",
    )


def _write(tmp: Path, tables, out: str, engine: str = "local") -> dict:
    """Run the write stage (its shard units in this process, or as Ray tasks); returns the manifests."""
    stage = _stage(tmp, tables[0], out, engine)
    Executor(use_ray=engine == "ray").run(stage)
    return stage.manifests


def _in_order(selected: pa.Table) -> pa.Table:
    """The sample order of one modality: by (sort_key, pair_id)."""
    return selected.sort_by([("sort_key", "ascending"), ("pair_id", "ascending")])


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


def test_shards_carry_every_pair_in_order_with_its_records(tmp_path):
    tables = _inputs(tmp_path, 10, combined=True)
    selected, _, scores = tables
    assert len(set(selected["sort_key"].to_pylist())) < selected.num_rows  # ties: the pair id orders them
    manifest = _write(tmp_path, tables, "a")["image"]
    folder = tmp_path / "a" / "shards" / "image"
    samples = _samples(folder)
    by_order = _in_order(selected)
    assert [s["pair_id"] for s in samples] == by_order["pair_id"].to_pylist()
    row = {c: scores[c].to_pylist() for c in scores.column_names}
    at = {cid: i for i, cid in enumerate(row["candidate_id"])}
    for s in samples:
        win = s["winner"]
        assert set(win["advantages"]) == {*SCORERS, "combined"}
        assert win["advantages"]["combined"] == row["combined_advantage"][at[win["candidate_id"]]]  # float32, exact
        assert win["scores"]["pickscore"] == row["pickscore"][at[win["candidate_id"]]]
        assert win["params"] == '{"steps":2}' and win["fps"] is None and isinstance(win["width"], int)
        assert "media_path" not in win and "media_path" not in s["loser"]
    assert [s["samples"] for s in manifest["shards"]] == [4, 4, 2]
    side = pq.read_table(folder / "train-000001.parquet")
    assert side["pair_id"].to_pylist() == by_order["pair_id"].to_pylist()[4:8]
    assert not {"sort_key", "winner_record", "loser_record"} & set(side.column_names)
    assert set(side["shard"].to_pylist()) == {"train-000001.tar"}
    gen = dict(zip(tables[1]["candidate_id"].to_pylist(), tables[1]["generator"].to_pylist()))
    assert side["winner_generator"].to_pylist() == [gen[w] for w in side["winner_id"].to_pylist()]
    assert side["loser_generator"].to_pylist() == ["sd15"] * 4
    # winners 0..9 are GENERATORS[i % 4] and of CATEGORIES[i % 3]
    want = Counter((CATEGORIES[i % 3], GENERATORS[i % 4]) for i in range(10))
    got = Counter({(c, g): n for c, gs in manifest["winner_generators_by_category"].items() for g, n in gs.items()})
    assert got == want and manifest["winner_generators"] == {"flux-dev": 2, "sd15": 3, "sdxl": 5}
    assert manifest["num_samples"] == 10 and manifest["categories"] == {"aesthetics": 4, "composition": 6}
    written = json.loads((folder / "manifest.json").read_text())
    assert written == manifest
    assert not list(folder.glob(".*.tmp"))  # every file landed by rename, no temp file left
    # a later run of the folder skips the finished shards and removes what a killed one left: shards past
    # its count, temp files
    tars = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.tar")}
    (folder / "train-000007.tar").write_bytes(b"old")
    (folder / ".train-000000.tar.0123456789abcdef.tmp").write_bytes(b"partial")
    assert _write(tmp_path, tables, "a")["image"] == manifest
    assert sorted(p.name for p in folder.iterdir()) == [
        "manifest.json", *(f"train-{i:06d}.{ext}" for i in range(3) for ext in ("parquet", "tar"))]
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.tar")} == tars  # not written again


def test_shard_units_follow_the_sample_order(tmp_path):
    """Each unit is one shard: a (sort_key, pair_id) range of one modality, its bounds the first sample of
    each shard; the shard index holds one row per shard with the counts the manifest is made of."""
    tables = _inputs(tmp_path, 10, combined=False)
    stage = _stage(tmp_path, tables[0], "u")
    units = stage.plan()
    first = _in_order(tables[0]).slice(0)
    keys, ids = first["sort_key"].to_pylist(), first["pair_id"].to_pylist()
    assert [(u.param("index"), u.param("lo")) for u in units] == [(i, [keys[4 * i], ids[4 * i]]) for i in range(3)]
    assert [u.param("hi") for u in units] == [units[1].param("lo"), units[2].param("lo"), None]
    assert {u.key for u in units} == {"image"} and stage.plan() == units  # fixed by the work alone
    Executor(use_ray=False).run(stage)
    index = stage.shard_index.read().sort_by("index").to_pylist()
    assert [(r["modality"], r["index"], r["name"], r["samples"]) for r in index] == [
        ("image", i, f"train-{i:06d}.tar", n) for i, n in enumerate((4, 4, 2))]
    assert [r["sha256"] for r in index] == [s["sha256"] for s in stage.manifests["image"]["shards"]]


def test_bytes_do_not_depend_on_where_units_run(ray_session, tmp_path, monkeypatch):
    """The same shard units in this process and as Ray tasks (running in any order): the same bytes."""
    on_ray = []
    tasks = Executor._tasks

    def spy(self, stage, units):
        on_ray.append(len(units))
        yield from tasks(self, stage, units)

    monkeypatch.setattr(Executor, "_tasks", spy)
    tables = _inputs(tmp_path, 10, combined=False)
    local = _write(tmp_path, tables, "local")
    assert on_ray == []
    ray = _write(tmp_path, tables, "ray", engine="ray")
    assert on_ray == [3]  # three shard units, as Ray tasks
    assert local == ray
    for name in ("local", "ray"):
        assert set(_samples(tmp_path / name / "shards" / "image")[0]["winner"]["advantages"]) == set(SCORERS)
    files = lambda d: {p.name: p.read_bytes() for p in (tmp_path / d / "shards" / "image").iterdir()}
    assert len(files("local")) == 7 and files("local") == files("ray")


def test_a_pair_without_its_record_is_refused(tmp_path):
    selected, candidates, scores = _inputs(tmp_path, 3, combined=False)
    records = selected["loser_record"].to_pylist()
    records[1] = None  # what a selected table made before records were attached would hold
    selected = selected.set_column(selected.schema.get_field_index("loser_record"), "loser_record", pa.array(records, pa.string()))
    with pytest.raises(ValueError, match=rf"selected pair {selected['pair_id'][1]}: no winner/loser record"):
        _write(tmp_path, (selected, candidates, scores), "bad")


def test_a_pair_naming_an_unknown_candidate_is_refused(tmp_path):
    """The records are attached at selection: a selected loser missing from the candidates is an error there."""
    from pipeline.select import select_pairs
    from schemas.config import parse_config
    from schemas.tables import pairs_schema
    from tests.conftest import SMALL

    selected, candidates, scores = _inputs(tmp_path, 3, combined=False)
    pairs = selected.select(pairs_schema(SCORERS).names).set_column(
        pairs_schema(SCORERS).get_field_index("kept"), "kept", pa.array([True] * 3))
    cfg = parse_config({**SMALL, "categories": {"aesthetics": {"quota": 5, "prompts": 1}, "composition": {"quota": 5, "prompts": 1}},
                        "scoring": {"reward_models": [{"name": s} for s in SCORERS]}, "pairing": {"max_pairs_per_prompt": 3}})
    prompts = pa.table({"prompt_id": ["p"], "prompt": ["x"]})
    cands = candidates.select(["candidate_id", "generator", "category"])
    records = record_table(candidates, scores, SCORERS, candidates["candidate_id"])
    ok = select_pairs(pairs, prompts, cfg, candidates=cands, records=records).selected
    assert ok.num_rows == 3 and ok["loser_record"].null_count == 0
    assert json.loads(ok["loser_record"][0].as_py())["candidate_id"] == ok["loser_id"][0].as_py()
    lost = pairs["loser_id"][1].as_py()
    records = records.filter(pc.invert(pc.equal(records["candidate_id"], lost)))
    with pytest.raises(ValueError, match=f"selected candidate {lost} is not in the candidates table"):
        select_pairs(pairs, prompts, cfg, candidates=cands, records=records)


def test_media_bytes_are_copied_unchanged(tmp_path):
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


def test_tars_are_what_webdatasets_own_writer_makes(tmp_path):
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
