"""The human study from a built dataset: sampling (stratified, media copied, the raters' votes), then
`cli.py agreement` on votes written in the server's format, with the figures in the dataset card."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from pipeline.catalogue import Table
from pipeline.media import MediaStore
from pipeline.study.card import BEGIN, study_section, update_card
from pipeline.study.run import StudyFolderError, run_agreement
from pipeline.study.sample import StudyError, allocate, sample_build
from schemas.study import PAIRS_FILE, STUDY_FILE, vote_column
from tests.conftest import REPO


def test_allocation_is_even_where_sizes_allow():
    assert allocate({"a": 2, "b": 10, "c": 10}, 12) == {"a": 2, "b": 5, "c": 5}
    assert allocate({"a": 3, "b": 3}, 100) == {"a": 3, "b": 3}
    assert sum(allocate({"a": 7, "b": 9, "c": 1}, 10).values()) == 10


@pytest.fixture(scope="module")
def study(built, tmp_path_factory):
    cfg, result = built
    build = tmp_path_factory.mktemp("study-build") / "b"
    shutil.copytree(result.out_dir, build)
    made = sample_build(build, build / "study", 6, seed=3)
    return build, made


def test_a_sample_is_stratified_with_media_and_votes(study):
    build, made = study
    pairs = pd.read_parquet(made.folder / PAIRS_FILE)
    meta = json.loads((made.folder / STUDY_FILE).read_text())
    assert len(pairs) == made.pairs == meta["pairs"] and meta["kind"] == "build"
    selected = ds.dataset(Table(str(build / "selected"), pa.schema([])).files(), format="parquet").to_table().to_pandas()
    sizes = selected.groupby("category").size().to_dict()
    assert pairs.groupby("category").size().to_dict() == {c: n for c, n in allocate(sizes, 6).items() if n}
    store = MediaStore(build / "media")
    by_id = selected.set_index("pair_id")
    for row in pairs.itertuples():
        winner, loser = json.loads(by_id.loc[row.pair_id, "winner_record"]), json.loads(by_id.loc[row.pair_id, "loser_record"])
        assert (made.folder / row.media_a).read_bytes() == store.read(winner["media_path"])  # a is the winner
        assert (made.folder / row.media_b).read_bytes() == store.read(loser["media_path"])
        for s in meta["raters"]:
            if s in winner["scores"]:
                diff = winner["scores"][s] - loser["scores"][s]
                assert getattr(row, vote_column(s)) == (1 if diff > 0 else -1 if diff < 0 else 0)
        p, vlm = by_id.loc[row.pair_id, "p_vlm"], getattr(row, vote_column("vlm"))
        assert pd.isna(vlm) if pd.isna(p) else vlm == (1 if p > 0.5 else -1 if p < 0.5 else 0)
    again = sample_build(build, build / "again", 6, seed=3)
    assert pd.read_parquet(again.folder / PAIRS_FILE)["pair_id"].tolist() == pairs["pair_id"].tolist()  # seeded
    shutil.rmtree(again.folder)


def test_sampling_refuses_what_is_not_a_build(study, tmp_path):
    build, made = study
    with pytest.raises(StudyError, match="no selected pairs"):
        sample_build(tmp_path, tmp_path / "s", 3)
    with pytest.raises(StudyError, match="already a study folder"):
        sample_build(build, made.folder, 3)


def _votes(folder, annotator: str, prefs: list[str | None], pair_ids: list[str]) -> None:
    lines = []
    for seq, (pid, pref) in enumerate(zip(pair_ids, prefs)):
        choice = {"a": "left", "b": "right", "tie": "tie", None: "skip"}[pref]
        lines.append(json.dumps({"annotator": annotator, "seq": seq, "pair_id": pid, "repeat": False, "left": "a",
                                 "choice": choice, "preferred": pref, "ms": 900, "time": "2026-12-03T07:00:00Z"}))
    (folder / "votes").mkdir(exist_ok=True)
    (folder / "votes" / f"{annotator}.jsonl").write_text("".join(line + "\n" for line in lines))


def test_agreement_writes_figures_and_the_card_section(study):
    build, made = study
    with pytest.raises(StudyFolderError, match="no votes yet"):
        run_agreement(made.folder)
    ids = pd.read_parquet(made.folder / PAIRS_FILE)["pair_id"].tolist()
    _votes(made.folder, "ann1", ["a"] * len(ids), ids)
    _votes(made.folder, "ann2", ["a"] * (len(ids) - 1) + ["b"], ids)
    _votes(made.folder, "ann3", ["a"] * len(ids), ids)
    result = run_agreement(made.folder, resamples=200)
    s = result.summary
    assert s["pairs"] == len(ids) and s["votes"] == 3 * len(ids) and s["pairs_with_majority"] == len(ids)
    assert s["annotator_agreement"]["by_annotator"]["ann2"]["agreement"] == pytest.approx((len(ids) - 1) / len(ids))
    # every sampled pair passed the build's rule, and people prefer the winner on all of them
    assert s["raters"]["pickscore"]["overall"]["estimate"] == 1.0
    assert json.loads(result.summary_path.read_text()) == s and "<script" not in result.report.read_text()
    card = (build / "card" / "README.md").read_text()
    assert result.card is not None and card.count(BEGIN) == 1 and "## Human study" in card
    assert "| pickscore | 100.0% [100.0, 100.0] |" in card
    update_card(build)  # again: replaced, not appended
    assert (build / "card" / "README.md").read_text().count(BEGIN) == 1
    assert study_section(build) in (build / "card" / "README.md").read_text()
    from pipeline.build import Build
    from schemas.config import load_config

    cfg = load_config(build / "config.yaml", {"output_dir": str(build)})
    Build(cfg).run(["write"])  # the build rewrites its card: the study's section stays
    assert (build / "card" / "README.md").read_text().count("## Human study") == 1


def test_cli_annotate_samples_without_serving(study, tmp_path):
    build, _ = study
    out = tmp_path / "s"
    proc = subprocess.run([sys.executable, str(REPO / "cli.py"), "annotate", str(build), "--sample", "4", "--study", str(out),
                           "--no-serve"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "sampled 4 pairs" in proc.stderr and (out / STUDY_FILE).is_file()
    bad = subprocess.run([sys.executable, str(REPO / "cli.py"), "agreement", str(tmp_path / "nowhere")],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert bad.returncode == 2 and "not a study folder" in bad.stderr and "Traceback" not in bad.stderr


def test_an_audits_rows_become_a_study_with_the_human_label(ray_session, vipo_cache, tmp_path):
    import pyarrow.parquet as pq

    from pipeline.audit.run import run_audit
    from pipeline.audit.sample import write_sample
    from pipeline.study.sample import AUDIT_CATEGORY, sample_audit
    from schemas.audit import parse_audit_config

    data = write_sample(tmp_path / "pickapic" / "train-0.parquet", rows=16, planted=False)
    cfg = parse_audit_config({"cache_dir": str(vipo_cache), "resources": {"num_cpus": 1, "num_actors": 1, "batch_size": 8}})
    run_audit(data, tmp_path / "audit", cfg)
    made = sample_audit(tmp_path / "audit", tmp_path / "study", 5, seed=1)
    pairs = pd.read_parquet(made.folder / PAIRS_FILE)
    meta = json.loads((made.folder / STUDY_FILE).read_text())
    assert made.pairs == 5 and meta["kind"] == "audit" and meta["raters"][-2:] == ["unanimous", "label"]
    raw = pq.read_table(data).to_pylist()
    scores = ds.dataset(Table(str(next((tmp_path / "audit" / "scores").iterdir())), pa.schema([])).files(),
                        format="parquet").to_table().to_pandas().set_index("row_id")
    for row in pairs.itertuples():
        src = raw[int(row.source_id.split(":")[1])]
        assert row.category == AUDIT_CATEGORY and row.prompt == src["caption"]
        assert (made.folder / row.media_a).read_bytes() == src["jpg_0"] and (made.folder / row.media_b).read_bytes() == src["jpg_1"]
        assert row.vote_label == (1 if src["label_0"] > 0.5 else -1 if src["label_0"] < 0.5 else 0)
        s0, s1 = scores.loc[row.source_id, "pickscore_0"], scores.loc[row.source_id, "pickscore_1"]
        assert row.vote_pickscore == (1 if s0 > s1 else -1 if s0 < s1 else 0)
