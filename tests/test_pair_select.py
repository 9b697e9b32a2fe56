"""Pairing and selection on hand-made score tables with known answers."""
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipeline.pair import BELOW_QUORUM, NO_MAJORITY, TIE, form_pairs
from pipeline.score import add_group_stats
from pipeline.select import OVER_QUOTA, PROMPT_CAP, select_pairs
from schemas.config import parse_config
from schemas.ids import pair_id
from schemas.tables import raw_scores_schema
from tests.conftest import SMALL

S = ["s1", "s2", "s3"]


def _raw(rows):
    cols = {k: [r[i] for r in rows] for i, k in enumerate(["candidate_id", "prompt_id", "category", "modality", *S])}
    cols["reason"] = [None] * len(rows)  # every candidate scored
    return pa.table(cols, schema=raw_scores_schema(S))


def test_group_stats_and_advantages():
    t = add_group_stats(_raw([("a", "p", "aesthetics", "image", 1.0, 0, 0), ("b", "p", "aesthetics", "image", 3.0, 0, 0)]), S)
    d = t.to_pandas().set_index("candidate_id")
    assert d.loc["a", "s1_group_mean"] == 2.0 and d.loc["a", "s1_group_std"] == 1.0
    assert d.loc["a", "s1_advantage"] == -1.0 and d.loc["b", "s1_advantage"] == 1.0
    assert d.loc["a", "s2_advantage"] == 0.0  # zero spread: no advantage, not NaN


def test_pairs_orientation_agreement_and_reasons():
    rows = [
        ("a", "p", "aesthetics", "image", 3.0, 3.0, 3.0),
        ("b", "p", "aesthetics", "image", 1.0, 1.0, 2.0),
        ("c", "p", "aesthetics", "image", 2.0, 2.0, 1.0),
        ("d", "q", "aesthetics", "image", 1.0, 1.0, 1.0),
        ("e", "q", "aesthetics", "image", 1.0, 1.0, 1.0),
    ]
    pairs = form_pairs(add_group_stats(_raw(rows), S), S, quorum=3, min_margin=0.0).to_pandas()
    assert len(pairs) == 4  # C(3,2) + C(2,2); never across prompts
    by = {(r.winner_id, r.loser_id): r for r in pairs.itertuples()}
    ab, ac, cb, de = by[("a", "b")], by[("a", "c")], by[("c", "b")], by[("d", "e")]
    assert ab.agree == 3 and ab.kept and pd.isna(ab.drop_reason)
    assert ab.pair_id == pair_id("a", "b")
    assert np.isclose(ab.margin_s1, 2.0) and np.isclose(ab.margin_s3, 1.0)
    assert ac.agree == 3 and ac.kept
    assert cb.agree == 2 and not cb.kept and cb.drop_reason == BELOW_QUORUM
    assert np.isclose(cb.margin_s3, -1.0)  # the dissenting scorer's margin is negative
    assert de.drop_reason == TIE and not de.kept
    assert pd.isna(cb.pair_id) and pd.isna(de.pair_id)  # a dropped pair is identified by (winner_id, loser_id)
    q2 = form_pairs(add_group_stats(_raw(rows), S), S, quorum=2, min_margin=0.0).to_pandas()
    assert q2.set_index(["winner_id", "loser_id"]).loc[("c", "b"), "pair_id"] == pair_id("c", "b")
    assert q2.set_index(["winner_id", "loser_id"]).loc[("c", "b"), "kept"]


def test_no_majority_when_scorers_split_evenly():
    rows = [("a", "p", "aesthetics", "image", 2.0, 1.0, 1.0), ("b", "p", "aesthetics", "image", 1.0, 2.0, 1.0)]
    pairs = form_pairs(add_group_stats(_raw(rows), S), S, quorum=1, min_margin=0.0).to_pandas()
    assert pairs.drop_reason.tolist() == [NO_MAJORITY]


def test_min_margin_turns_small_differences_into_ties():
    rows = [("a", "p", "aesthetics", "image", 1.0, 1.0, 1.0), ("b", "p", "aesthetics", "image", 1.1, 3.0, 3.0)]
    # two-member group: population std = |diff| / 2, so every normalised margin is exactly 2
    scores = add_group_stats(_raw(rows), S)
    assert form_pairs(scores, S, quorum=3, min_margin=1.99).to_pandas().kept.tolist() == [True]
    pairs = form_pairs(scores, S, quorum=1, min_margin=2.01).to_pandas()
    assert pairs.drop_reason.tolist() == [TIE]


def _kept_pairs(n_prompts, per_prompt, category, modality):
    rows = []
    for p in range(n_prompts):
        for k in range(per_prompt):
            w, l = f"{category}{p}w{k}", f"{category}{p}l{k}"
            rows.append(
                {"pair_id": pair_id(w, l), "prompt_id": f"{category}{p}", "category": category, "modality": modality,
                     "winner_id": w, "loser_id": l, "margin_s1": 1.0, "margin_s2": 1.0, "margin_s3": 1.0,
                     "agree": 3 - (k % 2), "n_scorers": 3, "kept": True, "drop_reason": None}
            )
    return rows


def test_select_caps_quota_and_interleaves():
    cfg = parse_config(
        {**SMALL, "categories": {"aesthetics": {"quota": 5, "prompts": 4}, "composition": {"quota": 3, "prompts": 4},
                                 "motion_quality": {"quota": 9, "prompts": 1}},
         "scoring": {"reward_models": [{"name": "pickscore"}, {"name": "hpsv21"}, {"name": "clipscore"}]},
         "pairing": {"quorum": 2, "max_pairs_per_prompt": 2}}
    )
    rows = _kept_pairs(4, 3, "aesthetics", "image") + _kept_pairs(4, 3, "composition", "image") + _kept_pairs(1, 3, "motion_quality", "video")
    from schemas.tables import pairs_schema

    scorers = cfg.scorer_names
    renamed = [{(f"margin_{scorers[int(k[-1]) - 1]}" if k.startswith("margin_s") else k): v for k, v in r.items()} for r in rows]
    pairs = pa.Table.from_pylist(renamed, schema=pairs_schema(scorers))
    prompts = pa.table({"prompt_id": sorted({r["prompt_id"] for r in rows}), "prompt": ["x"] * 9})
    sel = select_pairs(pairs, prompts, cfg)
    df = sel.selected.to_pandas()
    assert df.category.value_counts().to_dict() == {"aesthetics": 5, "composition": 3, "motion_quality": 2}
    assert df.groupby("prompt_id").size().max() <= 2
    assert sel.shortfall == {"motion_quality": (9, 2)}
    dropped = sel.dropped.to_pandas()
    assert (dropped.reason == PROMPT_CAP).sum() == 9  # one of three pairs of each of the 9 prompts
    assert (dropped.reason == OVER_QUOTA).sum() == (8 - 5) + (8 - 3)
    # the stronger (agree 3) pairs win the quota
    assert df[df.category == "composition"].agree.tolist() == [3, 3, 3]
    # the table is in sample order: by modality, then (sort_key, pair_id), with no ties in sort_key
    assert df[["modality", "sort_key", "pair_id"]].equals(
        df.sort_values(["modality", "sort_key", "pair_id"])[["modality", "sort_key", "pair_id"]].reset_index(drop=True))
    img = df[df.modality == "image"].sort_values(["sort_key", "pair_id"])
    assert len(img) == 8 and img.sort_key.is_unique and ((img.sort_key >= 0) & (img.sort_key < 1)).all()
    first4 = img.category.head(4).value_counts()
    assert set(first4.index) == {"aesthetics", "composition"}  # a prefix holds both categories
    again = select_pairs(pairs, prompts, cfg).selected
    assert again.equals(sel.selected)


def test_combined_advantage_is_the_reward_models_mean():
    names = ["pickscore", "hpsv21", "temporal_flicker"]
    raw = pa.table(
        {"candidate_id": ["a", "b", "c"], "prompt_id": ["p", "p", "p"], "category": ["motion_quality"] * 3,
         "modality": ["video"] * 3, "pickscore": [1.0, 2.0, 3.0], "hpsv21": [0.3, 0.1, 0.2],
         "temporal_flicker": [9.0, 0.0, 0.0], "reason": [None] * 3},
        schema=raw_scores_schema(names),
    )
    d = add_group_stats(raw, names).to_pandas().set_index("candidate_id")
    sd = np.sqrt(2 / 3)  # population std of (1, 2, 3); also of (0.3, 0.1, 0.2) x 10
    expected = {"a": (-1 / sd + 1 / sd) / 2, "b": (0.0 - 1 / sd) / 2, "c": (1 / sd + 0.0) / 2}
    for cid, value in expected.items():  # the video metric does not enter the combined advantage
        assert d.loc[cid, "combined_advantage"] == pytest.approx(value, abs=1e-6)
