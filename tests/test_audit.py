"""`audit` end to end on Ray with the five tiny reward models: a generated Pick-a-Pic parquet with
planted bad rows and ties (exact counts, exports that partition the scored rows in the input's
schema, a report that renders in headless Chromium), resume, pair files, shards and bad inputs."""
from __future__ import annotations

import io
import json
import shutil
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.audit.read import AuditInputError, discover
from pipeline.audit.run import run_audit
from pipeline.audit.sample import PLANTED, write_sample
from pipeline.catalogue import Table, read_slices
from pipeline.media import encode_image
from schemas.audit import SKIP_REASONS, audit_scores_schema, parse_audit_config
from tests.browser import screenshot

ROWS = 24  # row groups of 16 -> units [0,8) [8,16) [16,24)


def _cfg(cache, **kw):
    return parse_audit_config({"cache_dir": str(cache), "unit_rows": 8, "examples": 6,
                               "resources": {"num_cpus": 1, "num_actors": 1, "batch_size": 4}, **kw})


def _strip(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("input", "sources")}


@pytest.fixture(scope="module")
def audited(ray_session, vipo_cache, tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    data = write_sample(root / "pickapic" / "train-0.parquet", rows=ROWS, row_group_size=16)
    result = run_audit(data, root / "out", _cfg(vipo_cache))
    return data, result


def test_counts_are_exact(audited):
    _, result = audited
    s = result.summary
    expected = {r: sum(v == r for v in PLANTED.values()) for r in SKIP_REASONS}
    assert expected == {"missing_field": 2, "bad_label": 1, "tie_label": 2, "image_too_large": 1, "corrupt_image": 2, "failed": 0}
    assert s["skipped"] == expected
    assert (s["pairs_read"], s["pairs_scored"], s["pairs_skipped"]) == (ROWS, ROWS - 8, 8)
    assert result.units_run == 3
    assert s["all_agree_with_label"]["pairs"] + s["conflicts"]["pairs"] == s["pairs_scored"]
    assert sum(s["conflicts"]["kinds"].values()) == s["conflicts"]["pairs"]
    m = np.array(s["pairwise_agreement"]["matrix"])
    assert m.shape == (5, 5) and np.allclose(m, m.T)
    assert json.loads((result.out_dir / "summary.json").read_text())["skipped"] == expected


def test_exports_partition_the_scored_rows_in_the_input_schema(audited):
    data, result = audited
    source = pq.read_table(data)
    consistent = pq.read_table(result.out_dir / "consistent.parquet")
    conflicting = pq.read_table(result.out_dir / "conflicting.parquet")
    assert consistent.schema.equals(source.schema) and conflicting.schema.equals(source.schema)
    a, b = set(consistent["ranking_id"].to_pylist()), set(conflicting["ranking_id"].to_pylist())
    scored = {r for i, r in enumerate(source["ranking_id"].to_pylist()) if i not in PLANTED}
    assert a.isdisjoint(b) and a | b == scored
    assert (len(a), len(b)) == (result.summary["exports"]["consistent"], result.summary["exports"]["conflicting"])
    assert len(a) == result.summary["all_agree_with_label"]["pairs"]
    # rows are copied byte for byte, images included
    by_id = {r["ranking_id"]: r for r in source.to_pylist()}
    assert all(row == by_id[row["ranking_id"]] for row in conflicting.to_pylist())


def test_report_is_self_contained_and_escaped(audited):
    _, result = audited
    html = result.report.read_text()
    assert "<script" not in html and "src=\"http" not in html and "src='http" not in html
    assert html.count("data:image/png;base64,") >= 3  # agreement bars, heatmap, conflict kinds
    assert html.count('class="pair"') == 6 and "data:image/jpeg;base64," in html
    assert "Pairwise agreement between reward models" in html
    assert html.count("<td class=\"l\">train-0.parquet</td>") == len(PLANTED)  # the skipped rows, with reasons
    assert "image 1: image refused before decoding: Image size (3600000000 pixels)" in html


def test_report_renders_in_headless_chromium(audited, tmp_path):
    _, result = audited
    console, img = screenshot(result.report, tmp_path)
    assert console == []
    assert img.shape[:2] == (2000, 1200)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50 and img.std() > 10  # text, plots and thumbnails, not blank


def test_chromium_check_sees_script_errors(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text("<html><body><p>x</p><script>throw new Error('boom')</script></body></html>")
    console, _ = screenshot(page, tmp_path)
    assert any("Uncaught Error: boom" in line for line in console)


def test_killed_audit_resumes_to_the_same_summary(audited, vipo_cache, tmp_path):
    data, full = audited
    out = tmp_path / "out"
    shutil.copytree(full.out_dir / "scores", out / "scores")
    (folder,) = (out / "scores").iterdir()
    table = Table(str(folder), audit_scores_schema(_cfg(vipo_cache).scorer_names))
    recs = table.records()
    assert len(recs) == 3  # one record per unit, compacted into parts
    first = min(recs.values(), key=lambda r: min(read_slices([r.slice], ["row"])["row"].to_pylist()))
    table.compact(keep={first.id})  # as if killed after its first unit had landed
    limited = run_audit(data, out, _cfg(vipo_cache), limit=8)  # --limit 8 is the first unit: nothing to score
    assert (limited.units_run, limited.summary["pairs_read"]) == (0, 8)
    again = run_audit(data, out, _cfg(vipo_cache))
    assert again.units_run == 2
    assert _strip(again.summary) == _strip(full.summary)
    assert pq.read_table(out / "conflicting.parquet").equals(pq.read_table(full.out_dir / "conflicting.parquet"))
    assert run_audit(data, out, _cfg(vipo_cache)).units_run == 0
    # the folder gains a file that sorts first: only its unit runs, and old rows keep their file
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(data, folder / data.name)
    write_sample(folder / "a-new.parquet", rows=4, seed=1, size=16, planted=False)
    grown = run_audit(folder, out, _cfg(vipo_cache))
    assert grown.units_run == 1 and grown.summary["pairs_read"] == ROWS + 4
    exported = pq.read_table(out / "consistent.parquet").num_rows + pq.read_table(out / "conflicting.parquet").num_rows
    assert exported == ROWS - len(PLANTED) + 4
    old = pq.read_table(full.out_dir / "conflicting.parquet")["ranking_id"].to_pylist()
    assert set(old) <= set(pq.read_table(out / "conflicting.parquet")["ranking_id"].to_pylist())


def _png(seed: int) -> bytes:
    return encode_image(np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8), "png")


def test_pair_file_input(ray_session, vipo_cache, tmp_path):
    (tmp_path / "img").mkdir()
    for i in range(3):
        (tmp_path / "img" / f"{i}.png").write_bytes(_png(i))
    rows = [
        {"prompt": "a cat", "image_0": "img/0.png", "image_1": "img/1.png", "label_0": 1, "model_0": "x", "model_1": "y"},
        {"prompt": "a dog", "image_0": "img/1.png", "image_1": "img/2.png", "label_0": 0, "model_0": "y", "model_1": "x"},
        {"prompt": "a cow", "image_0": "img/2.png", "image_1": "img/9.png", "label_0": 0, "model_0": "y", "model_1": "x"},
        {"prompt": "a hen", "image_0": "img/0.png", "image_1": "img/2.png", "label_0": 0.5, "model_0": "x", "model_1": "x"},
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run_audit(data, tmp_path / "out", _cfg(vipo_cache))
    s = result.summary
    assert (s["pairs_read"], s["pairs_scored"]) == (4, 2)
    assert s["skipped"]["corrupt_image"] == 1 and s["skipped"]["tie_label"] == 1
    exported = pq.read_table(tmp_path / "out" / "consistent.parquet").to_pylist() + \
        pq.read_table(tmp_path / "out" / "conflicting.parquet").to_pylist()
    assert sorted(r["prompt"] for r in exported) == ["a cat", "a dog"]


def _shard(folder, samples: dict[str, dict[str, bytes]], generators: tuple[str, str]) -> None:
    """One tar + sidecar in the shard layout (docs/dataset_format.md), members in sorted order."""
    folder.mkdir(parents=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for key, members in samples.items():
            for suffix, payload in sorted(members.items()):
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    (folder / "train-000000.tar").write_bytes(buf.getvalue())
    n = len(samples)
    pq.write_table(pa.table({"pair_id": list(samples), "prompt": [members["txt"].decode() for members in samples.values()],
                             "winner_generator": [generators[0]] * n, "loser_generator": [generators[1]] * n}),
                   folder / "train-000000.parquet")


def test_shard_units_stream_the_tar_in_batches(tmp_path):
    from pipeline.audit.read import iter_unit, plan_units
    from pipeline.audit.stage import check_row

    folder = tmp_path / "shards" / "image"
    jpg = encode_image(np.full((8, 8, 3), 9, np.uint8))
    _shard(folder, {f"{i:016x}": {"json": b"{}", "txt": b"p", "win.jpg": jpg, "lose.jpg": jpg} for i in range(3)}, ("a", "b"))
    side = pq.read_table(folder / "train-000000.parquet")
    ghost = pa.table({"pair_id": ["ffffffffffffffff"], "prompt": ["not in the tar"], "winner_generator": ["a"],
                      "loser_generator": ["b"]})
    pq.write_table(pa.concat_tables([side, ghost]), folder / "train-000000.parquet")
    (unit,) = plan_units(discover(tmp_path))
    batches = list(iter_unit(unit, 2))
    assert [len(b) for b in batches] == [2, 2]
    rows = [r for b in batches for r in b]
    assert [r["row"] for r in rows] == [0, 1, 2, 3] and rows[0]["img_0"] == jpg and rows[0]["model_1"] == "b"
    assert [check_row(r)[0] for r in rows] == ["scored", "scored", "scored", "missing_field"]


def test_shard_folder_input_images_and_videos(ray_session, vipo_cache, tmp_path):
    from pipeline.media import encode_video

    def jpg(v):
        return encode_image(np.full((24, 24, 3), v, np.uint8))

    def mp4(seed):
        return encode_video(np.random.default_rng(seed).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8), fps=8)

    root = tmp_path / "build" / "shards"
    _shard(root / "image", {f"{i:016x}": {"txt": f"prompt {i}".encode(), "win.jpg": jpg(40 * i),
                                           "lose.jpg": b"broken" if i == 2 else jpg(200)} for i in range(3)},
           ("tiny-sd15", "tiny-sdxl"))
    _shard(root / "video", {f"{i + 8:016x}": {"txt": f"clip {i}".encode(), "win.mp4": mp4(i),
                                               "lose.mp4": b"\x00\x00\x00\x18ftypmp42 truncated" if i else mp4(9)}
                            for i in range(2)}, ("tiny-wan21", "tiny-wan21"))
    result = run_audit(tmp_path / "build", tmp_path / "out", _cfg(vipo_cache))
    s = result.summary
    assert s["kind"] == "shards" and (s["pairs_read"], s["pairs_scored"], s["skipped"]["corrupt_image"]) == (5, 3, 2)
    assert set(s["by_source_model"]) == {"tiny-sd15", "tiny-sdxl", "tiny-wan21"}
    assert s["by_source_model"]["tiny-wan21"]["pairs"] == 1
    out = pq.read_table(tmp_path / "out" / "consistent.parquet")
    assert out.schema.names == ["pair_id", "prompt", "winner_generator", "loser_generator"]
    exported = out.num_rows + pq.read_table(tmp_path / "out" / "conflicting.parquet").num_rows
    assert exported == 3


def test_a_file_unreadable_on_the_actor_is_one_line(ray_session, vipo_cache, tmp_path, monkeypatch):
    import pipeline.audit.run as run_module

    data = write_sample(tmp_path / "s.parquet", rows=24, size=16, planted=False, row_group_size=16)
    plan = run_module.plan_units

    def plan_then_shrink(*args, **kw):
        units = plan(*args, **kw)
        write_sample(data, rows=10, size=16, planted=False, row_group_size=16)
        return units

    monkeypatch.setattr(run_module, "plan_units", plan_then_shrink)
    cfg = _cfg(vipo_cache, reward_models=[{"name": "aesthetic"}, {"name": "clipscore"}])
    with pytest.raises(AuditInputError, match=r"^\S*s\.parquet: rows (8\.\.16|16\.\.24): (read 2 rows|cannot read)[^\n]*$"):
        run_audit(data, tmp_path / "out", cfg)


def test_bad_inputs_fail_with_one_line_naming_the_file(tmp_path):
    t = pq.read_table(write_sample(tmp_path / "ok.parquet", rows=2, planted=False)).drop_columns(["jpg_1"])
    pq.write_table(t, tmp_path / "nojpg.parquet")
    with pytest.raises(AuditInputError, match=r"nojpg\.parquet: missing column\(s\) \['jpg_1'\]"):
        discover(tmp_path / "nojpg.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(AuditInputError, match=r"junk\.parquet: not a readable parquet file"):
        discover(tmp_path / "junk.parquet")
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n{oops\n')
    from pipeline.audit.read import read_pair_file

    with pytest.raises(AuditInputError, match=r"p\.jsonl: line 2: not valid JSON"):
        read_pair_file(tmp_path / "p.jsonl")
    with pytest.raises(AuditInputError, match="no such file"):
        discover(tmp_path / "missing")
