"""The human study's agreement analysis (pipeline/study/agreement.py) on a planted study whose
answers are known exactly, on a hand-computed tiny study, on torn and corrupt vote files, and its
report (escaped, opens in headless Chromium with nothing on its console)."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import krippendorff
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.eval.stats import Bootstrap
from pipeline.study.agreement import analyse, read_pairs, read_study_votes
from pipeline.study.report import render_report
from schemas.errors import VipoError
from schemas.study import PAIRS_FILE, VOTE_FIELDS, VOTES_DIR, pairs_schema, vote_column
from tests.browser import screenshot

ACCURACY = {"ann0": 0.95, "ann1": 0.9, "ann2": 0.85, "ann3": 0.8, "ann4": 0.75, "ann5": 0.7}
TIE, SKIP, REPEAT = 0.05, 0.03, 0.10
RATERS = {"pickscore": (0.8, 1.0), "vlm": (0.85, 1.0), "unanimous": (0.9, 0.6), "label": (0.7, 1.0)}  # (accuracy, coverage)
N_PAIRS, CATEGORIES = 600, ("aesthetics", "motion_quality", "text_rendering")
# Fifteen interval checks at 95% would miss one in ~2 seeds by design; at 99% one seed in ~5 misses one
# (measured: 11 of seeds 0-59, 13 misses in 900 checks). The seed is fixed, so the test is deterministic.
BOOT = Bootstrap(resamples=2000, confidence=0.99, seed=0)


# -- the planted study ------------------------------------------------------------------------------
def _outcomes(acc: float) -> list[tuple[float, float]]:
    """(label relative to the truth, probability): right, wrong, tie, skip (NaN: no label)."""
    decided = 1.0 - TIE - SKIP
    return [(1.0, decided * acc), (-1.0, decided * (1 - acc)), (0.0, TIE), (np.nan, SKIP)]


def _majority_probs(accs: list[float], min_voters: int) -> tuple[float, float]:
    """(P(majority right), P(majority wrong)) of annotators with `accs`, enumerating every outcome;
    a zero sum or fewer than `min_voters` labels is no majority."""
    right = wrong = 0.0
    for combo in itertools.product(*(_outcomes(a) for a in accs)):
        labels = [lab for lab, _ in combo if not np.isnan(lab)]
        p = float(np.prod([q for _, q in combo]))
        if len(labels) >= min_voters and sum(labels) > 0:
            right += p
        elif len(labels) >= min_voters and sum(labels) < 0:
            wrong += p
    return right, wrong


def expected_agreement(acc: float, others: list[float], min_voters: int) -> float:
    """P(a vote of accuracy `acc` (when decided) equals the majority of `others` | that majority exists)."""
    right, wrong = _majority_probs(others, min_voters)
    q = right / (right + wrong)
    return acc * q + (1 - acc) * (1 - q)


def _draw(rng: np.random.Generator, acc: float, truth: np.ndarray) -> list[str | None]:
    u = rng.random(truth.size)
    right = np.where(truth > 0, "a", "b")
    wrong = np.where(truth > 0, "b", "a")
    out = np.where(u < SKIP, None, np.where(u < SKIP + TIE, "tie", np.where(rng.random(truth.size) < acc, right, wrong)))
    return list(out)


def simulate(seed: int = 7) -> tuple[pd.DataFrame, list[dict]]:
    """Pairs with a latent truth and rater votes, and every annotator's vote lines (first showings of
    all pairs in a random order, then repeats of REPEAT of them, independent draws)."""
    rng = np.random.default_rng(seed)
    truth = rng.choice([-1.0, 1.0], N_PAIRS)
    pairs = pd.DataFrame({"pair_id": [f"{i:016x}" for i in range(N_PAIRS)],
                          "category": rng.choice(CATEGORIES, N_PAIRS), "modality": "image", "prompt": "p",
                          "media_a": "", "media_b": "", "source_id": ""})
    for rater, (acc, coverage) in RATERS.items():
        vote = np.where(rng.random(N_PAIRS) < acc, truth, -truth)
        pairs[vote_column(rater)] = np.where(rng.random(N_PAIRS) < coverage, vote, 0).astype(np.int8)
    lines = []
    for annotator, acc in ACCURACY.items():
        order = rng.permutation(N_PAIRS)
        repeats = rng.choice(order, int(REPEAT * N_PAIRS), replace=False)
        shown = [(i, False) for i in order] + [(i, True) for i in repeats]
        preferred = _draw(rng, acc, truth[order]) + _draw(rng, acc, truth[repeats])
        for seq, ((i, repeat), pref) in enumerate(zip(shown, preferred)):
            choice = "skip" if pref is None else "tie" if pref == "tie" else "left" if pref == "a" else "right"
            lines.append({"annotator": annotator, "seq": seq, "pair_id": pairs["pair_id"][i], "repeat": repeat,
                          "left": "a", "choice": choice, "preferred": pref, "ms": 900, "time": "2025-01-01T00:00:00Z"})
    return pairs, lines


def write_study(folder: Path, pairs: pd.DataFrame, lines: list[dict]) -> Path:
    """A study folder as the sampler and the server leave it (pairs_schema, one jsonl per annotator)."""
    raters = [c.removeprefix("vote_") for c in pairs.columns if c.startswith("vote_")]
    pq.write_table(pa.Table.from_pandas(pairs, schema=pairs_schema(raters), preserve_index=False), folder / PAIRS_FILE)
    (folder / VOTES_DIR).mkdir()
    for annotator in sorted({v["annotator"] for v in lines}):
        text = "".join(json.dumps(v) + "\n" for v in lines if v["annotator"] == annotator)
        (folder / VOTES_DIR / f"{annotator}.jsonl").write_text(text)
    return folder


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    pairs, lines = simulate()
    folder = write_study(tmp_path_factory.mktemp("study"), pairs, lines)
    summary = analyse(read_pairs(folder), read_study_votes(folder), list(RATERS), BOOT)
    return pairs, lines, summary


def test_annotator_agreement_matches_the_exact_expectation(planted):
    _, _, s = planted
    by = s["annotator_agreement"]["by_annotator"]
    pooled = 0.0
    for annotator, acc in ACCURACY.items():
        others = [a for b, a in ACCURACY.items() if b != annotator]
        expected = expected_agreement(acc, others, min_voters=1)
        pooled += expected * by[annotator]["n"]
        got = by[annotator]
        assert got["low"] <= expected <= got["high"], (annotator, got, expected)
    assert by["ann0"]["high"] < ACCURACY["ann0"]  # the others' majority is noisy: agreement is not accuracy
    mean = s["annotator_agreement"]["mean"]
    expected_mean = pooled / sum(v["n"] for v in by.values())
    assert mean["low"] <= expected_mean <= mean["high"], (mean, expected_mean)
    assert mean["high"] - mean["low"] < 0.06
    assert s["annotator_agreement"]["unweighted_mean"] == pytest.approx(np.mean([v["agreement"] for v in by.values()]), abs=1e-5)
    for cat in CATEGORIES:
        iv = s["by_category"][cat]["annotator_agreement"]
        assert iv["low"] <= expected_mean <= iv["high"], (cat, iv)


def direct_majority(lines: list[dict], min_votes: int = 2) -> pd.Series:
    """The human majority per pair (+1, -1; 0: none or too few voters), computed from the lines directly."""
    first = pd.DataFrame([v for v in lines if not v["repeat"] and v["preferred"] is not None])
    first["label"] = first["preferred"].map({"a": 1, "b": -1, "tie": 0})
    per_pair = first.groupby("pair_id")["label"].agg(["sum", "size"])
    return np.sign(per_pair["sum"]).where(per_pair["size"] >= min_votes, 0)


def test_raters_match_the_exact_expectation(planted):
    pairs, lines, s = planted
    majority = direct_majority(lines).reindex(pairs["pair_id"]).fillna(0).to_numpy()
    assert s["pairs_with_majority"] == np.count_nonzero(majority)
    for rater, (acc, coverage) in RATERS.items():
        expected = expected_agreement(acc, list(ACCURACY.values()), min_voters=2)
        got = s["raters"][rater]
        assert got["overall"]["low"] <= expected <= got["overall"]["high"], (rater, got["overall"], expected)
        votes = pairs[vote_column(rater)].to_numpy()
        decided = (majority != 0) & (votes != 0)
        assert got["overall"]["n"] == decided.sum() == sum(got["by_category"][c]["n"] for c in CATEGORIES)
        assert got["overall"]["estimate"] == pytest.approx((votes == majority)[decided].mean(), abs=1e-6)
        assert got["coverage"] == pytest.approx(decided.sum() / np.count_nonzero(majority), abs=1e-6)
        assert got["coverage"] == pytest.approx(coverage, abs=0.1)
    assert s["raters"]["unanimous"]["overall"]["low"] > s["raters"]["label"]["overall"]["high"]  # 0.9 vs 0.7 is told apart


def test_self_consistency_and_counts(planted):
    pairs, lines, s = planted
    sc = s["self_consistency"]
    expected = 0.0
    for annotator, acc in ACCURACY.items():
        probs = [p for _, p in _outcomes(acc)[:3]]
        expected += sc["by_annotator"][annotator]["n"] * sum(p * p for p in probs) / sum(probs) ** 2
    expected /= sc["overall"]["n"]
    assert sc["overall"]["low"] <= expected <= sc["overall"]["high"], (sc["overall"], expected)
    assert sc["overall"]["n"] == pytest.approx(len(ACCURACY) * REPEAT * N_PAIRS * (1 - SKIP) ** 2, rel=0.1)
    assert s["pairs"] == N_PAIRS and s["annotators"] == sorted(ACCURACY)
    assert s["skips"] == sum(v["preferred"] is None for v in lines)
    assert s["votes"] == sum(v["preferred"] is not None and not v["repeat"] for v in lines)
    assert s["pairs_with_majority"] + s["no_majority"] + s["too_few_votes"] == N_PAIRS
    assert sum(c["pairs"] for c in s["by_category"].values()) == N_PAIRS
    json.dumps(s, allow_nan=False)


def test_alpha_and_pairwise_agreement_against_direct_computation(planted):
    pairs, lines, s = planted
    first = pd.DataFrame([v for v in lines if not v["repeat"]])
    codes = first["preferred"].map({"a": 0.0, "b": 1.0, "tie": 2.0})
    table = first.assign(code=codes).pivot(index="annotator", columns="pair_id", values="code")
    direct = krippendorff.alpha(reliability_data=table.to_numpy(dtype=float), level_of_measurement="nominal")
    assert s["alpha"] == pytest.approx(direct, abs=1e-6)
    assert 0.3 < s["alpha"] < 0.8
    same = total = 0
    for _, col in table.items():
        labels = col.dropna().tolist()
        for x, y in itertools.combinations(labels, 2):
            same, total = same + (x == y), total + 1
    assert s["pairwise_agreement"] == pytest.approx(same / total, abs=1e-6)


# -- the tiny study, by hand ------------------------------------------------------------------------
P = [f"{i:016x}" for i in range(1, 5)]


def tiny() -> tuple[pd.DataFrame, pd.DataFrame]:
    """p1: a a b (majority a); p2: b tie b (b); p3: a b tie (no majority); p4: one voter (too few).
    Repeats: x p1 a (consistent), y p2 b (first was a tie), z p3 skip."""
    pairs = pd.DataFrame({"pair_id": P, "category": ["c1", "c1", "c2", "c2"],
                          "vote_vlm": pd.array([1, 1, -1, 1], dtype="Int8"),
                          "vote_pickscore": pd.array([0, -1, None, None], dtype="Int8")})
    rows = [("x", 0, P[0], False, "a"), ("y", 0, P[0], False, "a"), ("z", 0, P[0], False, "b"),
            ("x", 1, P[1], False, "b"), ("y", 1, P[1], False, "tie"), ("z", 1, P[1], False, "b"),
            ("x", 2, P[2], False, "a"), ("y", 2, P[2], False, "b"), ("z", 2, P[2], False, "tie"),
            ("x", 3, P[3], False, "a"),
            ("x", 4, P[0], True, "a"), ("y", 3, P[1], True, "b"), ("z", 3, P[2], True, None)]
    return pairs, pd.DataFrame(rows, columns=["annotator", "seq", "pair_id", "repeat", "preferred"])


def test_tiny_study_by_hand():
    s = analyse(*tiny(), ["vlm", "pickscore"])
    assert (s["pairs"], s["votes"], s["repeat_votes"], s["skips"]) == (4, 10, 2, 1)
    assert (s["pairs_with_majority"], s["no_majority"], s["too_few_votes"]) == (2, 1, 1)
    # Leave-one-out: x agrees on p2, not p3; y (tie on p2) disagrees on p3; z disagrees on p1, agrees on p2.
    by = s["annotator_agreement"]["by_annotator"]
    assert {a: (v["agreement"], v["n"]) for a, v in by.items()} == {"x": (0.5, 2), "y": (0.0, 1), "z": (0.5, 2)}
    assert s["annotator_agreement"]["mean"]["estimate"] == 0.4 and s["annotator_agreement"]["mean"]["n"] == 5
    assert s["annotator_agreement"]["unweighted_mean"] == pytest.approx(1 / 3, abs=1e-6)
    # Coincidences: o_aa = o_bb = 1, o_ab = o_bt = 1.5, o_at = 0.5; n = 9, n_a, n_b, n_t = 3, 4, 2:
    # alpha = 1 - (n - 1) * 7 / (81 - 29) = -1/13. Pairwise: 1/3 + 1/3 + 0 of 9 annotator pairs.
    assert s["alpha"] == pytest.approx(-1 / 13, abs=1e-6)
    assert s["pairwise_agreement"] == pytest.approx(2 / 9, abs=1e-6)
    assert s["self_consistency"]["overall"]["estimate"] == 0.5 and s["self_consistency"]["overall"]["n"] == 2
    assert s["self_consistency"]["by_annotator"]["z"] == {"consistency": None, "n": 0, "low": None, "high": None}
    vlm, pick = s["raters"]["vlm"], s["raters"]["pickscore"]
    assert (vlm["overall"]["estimate"], vlm["overall"]["n"], vlm["coverage"]) == (0.5, 2, 1.0)
    assert (pick["overall"]["estimate"], pick["overall"]["n"], pick["coverage"]) == (1.0, 1, 0.5)
    assert vlm["by_category"]["c2"] == {"estimate": None, "low": None, "high": None, "n": 0}
    assert s["by_category"]["c1"]["annotator_agreement"]["estimate"] == pytest.approx(2 / 3, abs=1e-6)
    assert s["by_category"]["c2"]["annotator_agreement"]["estimate"] == 0.0
    text = json.dumps(s, allow_nan=False)
    assert "NaN" not in text
    # min_votes 1: p4's single voter is a majority too.
    assert analyse(*tiny(), ["vlm"], min_votes=1)["raters"]["vlm"]["overall"]["n"] == 3


def test_empty_study_is_json_safe():
    pairs, votes = tiny()
    s = analyse(pairs, votes.iloc[:0], ["vlm"])
    assert s["alpha"] is None and s["pairwise_agreement"] is None and s["annotator_agreement"]["unweighted_mean"] is None
    assert s["raters"]["vlm"]["coverage"] is None
    json.dumps(s, allow_nan=False)
    with pytest.raises(VipoError, match="vote_hpsv21"):
        analyse(pairs, votes, ["hpsv21"])


# -- reading the folder -----------------------------------------------------------------------------
def _vote(seq: int, annotator: str = "ann0", preferred: str | None = "a") -> dict:
    return {"annotator": annotator, "seq": seq, "pair_id": P[seq % 4], "repeat": False, "left": "a",
            "choice": "left", "preferred": preferred, "ms": 1, "time": "t"}


def test_torn_last_line_is_ignored(tmp_path):
    votes = tmp_path / VOTES_DIR
    votes.mkdir()
    whole = "".join(json.dumps(_vote(i)) + "\n" for i in range(3))
    (votes / "ann0.jsonl").write_text(whole + json.dumps(_vote(3))[:25])  # cut mid-write
    (votes / "ann1.jsonl").write_text(whole.replace("ann0", "ann1") + '{"annotator": "ann1", "se\n')  # cut, then a newline
    (votes / "ann2.jsonl").write_text(whole.replace("ann0", "ann2") + json.dumps(_vote(3, "ann2")))  # never acknowledged
    (votes / "notes.v1.jsonl").write_text("not the server's\n")  # not an annotator id: not a votes file
    df = read_study_votes(tmp_path)
    assert list(df.columns) == list(VOTE_FIELDS)
    assert df.groupby("annotator").size().to_dict() == {"ann0": 3, "ann1": 3, "ann2": 3}


@pytest.mark.parametrize("bad, message", [
    ("{not json", "not a vote line"),
    (json.dumps({**_vote(1), "preferred": "left"}), "preferred"),
    (json.dumps({**_vote(1), "annotator": "ann9"}), "another annotator's vote"),
    (json.dumps({k: v for k, v in _vote(1).items() if k != "repeat"}), "exactly the fields"),
    (json.dumps({**_vote(1), "pair_id": "../../etc"}), "pair_id"),
])
def test_a_bad_middle_line_names_file_and_line(tmp_path, bad, message):
    votes = tmp_path / VOTES_DIR
    votes.mkdir()
    (votes / "ann0.jsonl").write_text(json.dumps(_vote(0)) + "\n" + bad + "\n" + json.dumps(_vote(2)) + "\n")
    with pytest.raises(VipoError) as err:
        read_study_votes(tmp_path)
    text = str(err.value)
    assert "\n" not in text and f"{votes / 'ann0.jsonl'}:2:" in text and message in text


def test_read_pairs_errors(tmp_path):
    with pytest.raises(VipoError, match=PAIRS_FILE):
        read_pairs(tmp_path)
    (tmp_path / PAIRS_FILE).write_bytes(b"PAR1 not really")
    with pytest.raises(VipoError, match="parquet"):
        read_pairs(tmp_path)


# -- the report -------------------------------------------------------------------------------------
HOSTILE = '<script>alert(1)</script>"\' $x^2$ &amp;'


def hostile_summary(planted) -> dict:
    pairs, lines, _ = planted
    pairs = pairs.copy()
    pairs.loc[pairs.index[:50], "category"] = HOSTILE
    pairs[vote_column(HOSTILE)] = pairs[vote_column("vlm")]
    summary = analyse(pairs, pd.DataFrame(lines), [*RATERS, HOSTILE], BOOT)
    return {"study": f"/data/{HOSTILE}", "source": HOSTILE, **summary, "title": HOSTILE}


def test_report_escapes_user_strings(planted):
    page = render_report(hostile_summary(planted))
    assert "<script" not in page and "alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#x27; $x^2$ &amp;amp;" in page
    assert 'http-equiv="Content-Security-Policy"' in page and "img-src data:" in page
    assert page.count("data:image/png;base64,") == 1
    pairs, votes = tiny()
    empty = render_report(analyse(pairs, votes.iloc[:0], ["vlm"]))  # nothing measured: n/a, no plot
    assert "n/a" in empty and "data:image/png" not in empty
    named = render_report({**analyse(pairs, votes, ["vlm"]), "study": "/data/my-study/"})
    assert "Human study: my-study</h1>" in named


def test_report_opens_in_chromium(planted, tmp_path):
    path = tmp_path / "report.html"
    path.write_text(render_report(hostile_summary(planted)), encoding="utf-8")
    console, img = screenshot(path, tmp_path)
    assert console == []
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50 and img.std() > 10  # text and a plot, not blank
