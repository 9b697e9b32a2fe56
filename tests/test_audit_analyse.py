"""The audit's pure parts, exact numbers on hand-built inputs: agreement analysis, row checks, config."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.audit.analyse import classify, conflict_kind, summarise
from pipeline.audit.read import AuditInputError, discover, iter_unit, plan_units
from pipeline.audit.report import render_report
from pipeline.audit.sample import bomb_png, write_sample
from pipeline.audit.stage import check_row, decode_pair, decode_video_pair
from pipeline.media import encode_image
from schemas.audit import load_audit_config, parse_audit_config
from schemas.config import ConfigError

M = ["pickscore", "hpsv21", "imagereward"]


def _table() -> pd.DataFrame:
    """Six scored pairs and two skipped ones; votes per model (+1 = image 0) in the comments."""
    rows = [
        # label_0, (s0, s1) per model in M, model_0, model_1
        (1.0, [(2, 1), (2, 1), (2, 1)], "A", "B"),  # + + +  label +  consistent
        (0.0, [(1, 2), (1, 2), (1, 2)], "A", "A"),  # - - -  label -  consistent
        (1.0, [(2, 1), (2, 1), (1, 2)], "B", "C"),  # + + -  label +  imagereward alone
        (1.0, [(1, 2), (1, 2), (1, 2)], "A", "C"),  # - - -  label +  all three against
        (0.0, [(3, 3), (1, 2), (1, 2)], "C", "C"),  # 0 - -  label -  pickscore alone (no preference)
        (0.0, [(2, 1), (2, 1), (1, 2)], "B", "A"),  # + + -  label -  pickscore + hpsv21
    ]
    recs = []
    for i, (label, scores, m0, m1) in enumerate(rows):
        rec = {"row_id": f"k:{i:010d}", "source": 0, "row": i, "status": "scored", "label_0": label, "model_0": m0, "model_1": m1}
        for name, (s0, s1) in zip(M, scores):
            rec[f"{name}_0"], rec[f"{name}_1"] = float(s0), float(s1)
        recs.append(rec)
    for i, status in ((6, "tie_label"), (7, "corrupt_image")):
        recs.append({"row_id": f"k:{i:010d}", "source": 0, "row": i, "status": status, "label_0": 0.5 if i == 6 else 1.0,
                     "model_0": "A", "model_1": "B", **{f"{n}_{s}": np.nan for n in M for s in (0, 1)}})
    return pd.DataFrame(recs)


def test_summary_exact_numbers():
    s = summarise(_table(), M)
    assert (s["pairs_read"], s["pairs_scored"], s["pairs_skipped"]) == (8, 6, 2)
    assert s["skipped"]["tie_label"] == 1 and s["skipped"]["corrupt_image"] == 1 and s["skipped"]["missing_field"] == 0
    assert s["agreement_with_label"] == {"pickscore": 3 / 6, "hpsv21": 4 / 6, "imagereward": 4 / 6}
    assert s["all_agree_with_each_other"] == {"pairs": 3, "share": 0.5}
    assert s["all_agree_with_label"] == {"pairs": 2, "share": 2 / 6}
    assert s["majority_agrees_with_label"] == {"pairs": 4, "share": 4 / 6}
    # among the pairs both models decide (pickscore abstains on one): same vote / both decide
    expected = np.array([[5 / 5, 5 / 5, 3 / 5], [5 / 5, 6 / 6, 4 / 6], [3 / 5, 4 / 6, 6 / 6]])
    np.testing.assert_allclose(s["pairwise_agreement"]["matrix"], expected, atol=1e-6)
    assert s["conflicts"]["pairs"] == 4
    assert list(s["conflicts"]["kinds"].items()) == [
        ("all 3 against the label", 1), ("imagereward alone", 1), ("pickscore + hpsv21", 1), ("pickscore alone", 1)]
    by = s["by_source_model"]
    assert {k: (v["pairs"], v["consistent"]) for k, v in by.items()} == {"A": (4, 2), "B": (3, 1), "C": (3, 0)}
    assert by["A"]["agreement_with_label"]["pickscore"] == 0.5
    assert by["C"]["agreement_with_label"] == {"pickscore": 1 / 3, "hpsv21": 2 / 3, "imagereward": 1 / 3}


def test_classify_marks_consistent_rows_only_among_scored():
    c = classify(_table(), M)
    assert c["row"].tolist() == [0, 1, 2, 3, 4, 5]
    assert c["consistent"].tolist() == [True, True, False, False, False, False]
    assert c["dissenters"].tolist() == [0, 0, 1, 3, 1, 2]


def test_conflict_kind_names():
    names = ["a", "b", "c", "d", "e"]
    dissent = np.array([[0, 0, 0, 0, 0], [0, 0, 1, 0, 0], [1, 0, 0, 0, 1], [1, 1, 1, 1, 1]], dtype=bool)
    assert conflict_kind(dissent, names).tolist() == ["", "c alone", "a + e", "all 5 against the label"]


def test_empty_table_gives_no_shares():
    s = summarise(_table().iloc[6:], M)
    assert s["pairs_scored"] == 0 and s["all_agree_with_label"]["share"] is None and s["pairwise_agreement"]["matrix"] is None
    html = render_report({**s, "input": "x.parquet", "exports": {"consistent": 0, "conflicting": 0}}, [])
    assert "n/a" in html and "Pairwise agreement between reward models" not in html


def _row(**kw):
    img = encode_image(np.zeros((8, 8, 3), np.uint8), "png")
    return {"caption": "c", "img_0": img, "img_1": img, "label_0": 1.0, **kw}


@pytest.mark.parametrize("kw, status", [
    ({}, "scored"),
    ({"caption": None}, "missing_field"),
    ({"img_1": None}, "missing_field"),
    ({"label_0": None}, "missing_field"),
    ({"label_0": 0.3}, "bad_label"),
    ({"label_0": "yes"}, "bad_label"),
    ({"label_0": float("nan")}, "missing_field"),
    ({"label_0": 0.5}, "tie_label"),
    ({"label_0": "0"}, "scored"),  # csv labels arrive as text
    ({"img_1": None, "error": "cannot read x.png"}, "corrupt_image"),
    ({"img_1": None, "error": "cannot read x.png", "label_0": 0.5}, "tie_label"),
])
def test_check_row(kw, status):
    assert check_row(_row(**kw))[0] == status


def test_decode_pair_refuses_bombs_and_corrupt_bytes():
    jpg = encode_image(np.full((16, 16, 3), 128, np.uint8), "jpg")
    assert decode_pair(_row(img_0=jpg), 1000)[0] == "scored"
    status, detail, _ = decode_pair(_row(img_1=bomb_png()), 64_000_000)
    assert status == "image_too_large" and "image 1" in detail
    assert decode_pair(_row(img_0=jpg[: len(jpg) // 3]), 1000)[0] == "corrupt_image"
    assert decode_pair(_row(img_0=b"GIF89a nonsense"), 1000)[0] == "corrupt_image"
    assert decode_pair(_row(img_0=jpg), 255)[0] == "image_too_large"  # 16x16 = 256 > 255


def test_report_escapes_dataset_text():
    df = _table()
    summary = {**summarise(df, M), "input": "<i>x</i>.parquet", "exports": {"consistent": 2, "conflicting": 4}}
    ex = {**classify(df, M).iloc[2].to_dict(), "file": "f<script>.parquet", "caption": "<script>alert(1)</script>",
          "model_0": "<b>m</b>", "thumb_0": None, "thumb_1": None}
    html = render_report(summary, [ex])
    assert "<script" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;b&gt;m&lt;/b&gt;" in html
    assert "Content-Security-Policy" in html and html.count("data:image/png;base64,") == 4


def test_config_defaults_and_errors(tmp_path):
    cfg = load_audit_config(None)
    assert cfg.scorer_names == ["pickscore", "hpsv21", "imagereward", "clipscore", "aesthetic"]
    assert load_audit_config("configs/audit-demo.yaml").scorer_names == cfg.scorer_names
    bad = tmp_path / "a.yaml"
    bad.write_text("reward_models: [{name: pickscore}, {name: nope}]\n")
    with pytest.raises(ConfigError, match=r"a\.yaml: reward_models\.1: unknown reward model 'nope'"):
        load_audit_config(bad)
    with pytest.raises(ConfigError, match="unit_rows"):
        parse_audit_config({"unit_rows": 0}, "x.yaml")
    with pytest.raises(ConfigError, match="x.yaml: batch: Extra inputs"):
        parse_audit_config({"batch": 3}, "x.yaml")


def test_units_are_row_ranges_inside_row_groups_and_read_streamed(tmp_path):
    data = write_sample(tmp_path / "s.parquet", rows=20, size=16, planted=False, row_group_size=16)
    sources = discover(data)
    units = plan_units(sources, 6)
    assert [(u["row_group"], u["start"], u["stop"]) for u in units] == [(0, 0, 6), (0, 6, 12), (0, 12, 16), (1, 16, 20)]
    assert [u["id"] for u in plan_units(discover(data), 6)] == [u["id"] for u in units]  # same file, same units
    assert [(u["start"], u["stop"]) for u in plan_units(sources, 6, limit=14)] == [(0, 6), (6, 12), (12, 14)]
    assert [(u["start"], u["stop"]) for u in plan_units(sources)] == [(0, 16), (16, 20)]  # default: row groups
    assert [(u["start"], u["stop"]) for u in plan_units(sources, limit=18)] == [(0, 16), (16, 18)]
    table = pq.read_table(data)
    batches = list(iter_unit(units[1], 4))
    assert [len(b) for b in batches] == [2, 4]  # the reader's batches of 4 cut at the unit's edges
    rows = [r for b in batches for r in b]
    assert [r["row"] for r in rows] == list(range(6, 12))
    assert [r["img_1"] for r in rows] == table["jpg_1"].to_pylist()[6:12]
    assert [r["caption"] for r in next(iter_unit(units[3], 8))] == table["caption"].to_pylist()[16:20]


def test_decode_video_pair_probes_before_decoding():
    from pipeline.media import encode_video

    clip = encode_video(np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8), fps=8)
    row = _row(img_0=clip, img_1=clip)
    status, _, clips = decode_video_pair(row, 1024, 5, 3)
    assert status == "scored" and [len(c) for c in clips] == [3, 3] and clips[0][0].size == (32, 32)
    assert decode_video_pair(row, 1023, 5, 3)[0] == "image_too_large"  # 32x32 frames > 1023 pixels
    status, detail, _ = decode_video_pair(row, 1024, 4, 3)
    assert status == "image_too_large" and "5 frames" in detail
    assert decode_video_pair(_row(img_0=clip, img_1=b"not a video"), 1024, 5, 3)[0] == "corrupt_image"


def test_export_schema_promotes_nulls_and_refuses_other_columns(tmp_path):
    from pipeline.audit.export import _schema_of
    from pipeline.audit.read import Source

    def side(name, table):
        pq.write_table(table, tmp_path / name)
        return Source("shards", str(tmp_path / name), "k", None)

    a = side("a.parquet", pa.table({"pair_id": ["x"], "p_vlm": pa.array([None], pa.null())}))
    b = side("b.parquet", pa.table({"pair_id": ["y"], "p_vlm": pa.array([0.5], pa.float32())}))
    c = side("c.parquet", pa.table({"pair_id": ["z"], "other": [1]}))
    assert _schema_of([a, b]).field("p_vlm").type == pa.float32()
    with pytest.raises(AuditInputError, match=r"c\.parquet: columns \['pair_id', 'other'\] differ"):
        _schema_of([a, c])


def test_a_unit_whose_file_changed_is_a_read_error_naming_the_file(tmp_path):
    from pipeline.audit.stage import AuditScoreStage, UnitReadError
    from schemas.config import ResourceConfig

    data = write_sample(tmp_path / "s.parquet", rows=24, size=16, planted=False, row_group_size=16)
    units = plan_units(discover(data), 8)
    write_sample(data, rows=10, size=16, planted=False, row_group_size=16)  # shrinks under the audit
    stage = AuditScoreStage(resources=ResourceConfig(batch_size=4), models=[])
    stage.setup()  # no models: reading and row checks only
    assert stage.process([units[0]]).num_rows == 8
    with pytest.raises(UnitReadError, match=r"s\.parquet: rows 8\.\.16: read 2 rows; the file changed"):
        stage.process([units[1]])
    with pytest.raises(UnitReadError, match=r"s\.parquet: rows 16\.\.24: cannot read \(ArrowInvalid"):
        stage.process([units[2]])


def test_csv_pair_file_rows_resolve_paths_and_read_labels(tmp_path):
    img = encode_image(np.zeros((8, 8, 3), np.uint8), "png")
    (tmp_path / "a.png").write_bytes(img)
    (tmp_path / "pairs.csv").write_text("prompt,image_0,image_1,label\nhello,a.png,a.png,0\n,a.png,,1\n")
    units = plan_units(discover(tmp_path / "pairs.csv"), 8)
    rows = [r for b in iter_unit(units[0], 8) for r in b]
    assert [r["path_0"] for r in rows] == ["a.png"] * 2 and rows[1]["path_1"] is None  # as written; read inside the folder
    assert rows[0]["img_0"] == img and [check_row(r)[0] for r in rows] == ["scored", "missing_field"]
    assert rows[0]["label_0"] == "0"  # csv text; check_row reads it as 0.0 (image 1 preferred)


def test_pairwise_agreement_is_json_safe_when_a_model_never_decides():
    from pipeline.audit.analyse import pairwise_agreement

    v = np.array([[0, 1], [0, -1], [0, 1]], np.int8)  # the first model has no preference anywhere
    assert pairwise_agreement(v) == [[None, None], [None, 1.0]]
