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
