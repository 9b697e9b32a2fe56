"""summary.json's figures from the eval's rows: means, paired win rates, sign tests, VLM verdicts, alignment.

Every comparison is paired: a candidate's image and the base's image of the same prompt and seed.
Intervals resample prompts (all seeds of a prompt move together); docs/eval.md, "Figures" and
"Intervals", says how to read them.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from pipeline.eval.stats import Bootstrap, bootstrap_mean, compare, paired_outcomes, sign_test
from reward_models.video import DESCRIPTIVE_METRICS

OVERALL = "overall"


def _scopes(df: pd.DataFrame, categories: Sequence[str]):
    """(scope name, rows): every row, then each category's."""
    yield OVERALL, df
    for cat in categories:
        yield cat, df[df["category"] == cat]


def _by_scope(df: pd.DataFrame, categories: Sequence[str], fn) -> dict:
    out = {}
    for scope, rows in _scopes(df, categories):
        out[scope] = fn(rows)
    return {"overall": out.pop(OVERALL), "by_category": out}


def means(scores: pd.DataFrame, model: str, metrics: Sequence[str], categories: Sequence[str], boot: Bootstrap) -> dict:
    rows = scores[scores["model"] == model]
    return _by_scope(rows, categories, lambda r: {
        m: bootstrap_mean(r[m].to_numpy(float), r["prompt_id"].to_numpy(), boot).to_json() for m in metrics})


def paired(scores: pd.DataFrame, base: str, candidate: str, metrics: Sequence[str]) -> pd.DataFrame:
    """One row per (prompt, seed) both models rendered: `<metric>` (candidate) and `<metric>_base`."""
    keys = ["prompt_id", "category", "seed"]
    cand = scores[scores["model"] == candidate][keys + list(metrics)]
    ref = scores[scores["model"] == base][keys + list(metrics)]
    return cand.merge(ref, on=keys, suffixes=("", "_base"))


def comparisons(pairs: pd.DataFrame, metrics: Sequence[str], categories: Sequence[str], boot: Bootstrap) -> dict:
    return _by_scope(pairs, categories, lambda r: {
        m: compare(r[m].to_numpy(float), r[f"{m}_base"].to_numpy(float), r["prompt_id"].to_numpy(), boot) for m in metrics})


def vlm_comparison(rows: pd.DataFrame, boot: Bootstrap) -> dict:
    """The rater's swap-debiased P(candidate better) per pair: its mean, and the share of pairs it
    gives to the candidate (p > 0.5; exactly 0.5 counts one half) with the sign test."""
    p = rows["p_candidate"].to_numpy(float)
    clusters = rows["prompt_id"].to_numpy()
    outcome = paired_outcomes(p, np.full_like(p, 0.5))
    decided = ~np.isnan(outcome)
    wins, losses = int((outcome[decided] == 1.0).sum()), int((outcome[decided] == 0.0).sum())
    pc = rows["position_consistency"].to_numpy(float)
    p_value = sign_test(wins, losses) if wins + losses else None
    return {
        "win_rate": bootstrap_mean(outcome, clusters, boot).to_json(),
        "wins": wins, "losses": losses, "ties": int(decided.sum()) - wins - losses,
        "sign_test_p": p_value,
        "p_candidate": bootstrap_mean(p, clusters, boot).to_json(),
        "position_consistency": None if not np.isfinite(pc).any() else round(float(np.nanmean(pc)), 6),
        "significant": p_value is not None and p_value < 1 - boot.confidence,
    }


def compared_metrics(metrics: Sequence[str]) -> list[str]:
    """Metrics a win rate means something for: not the descriptive ones (more motion is not better)."""
    return [m for m in metrics if m not in DESCRIPTIVE_METRICS]


def analyse(scores: pd.DataFrame, judgements: pd.DataFrame | None, *, base: str, candidates: Sequence[str],
            metrics: Sequence[str], boot: Bootstrap) -> dict:
    """The figures of summary.json (everything but its header): `scores` holds one row per image with
    model, prompt_id, category, seed, the metric columns and (when measured) p_yes; `judgements` one
    row per judged pair with model (the candidate), prompt_id, category, p_candidate, position_consistency."""
    categories = sorted(scores["category"].unique())
    present = [m for m in metrics if scores[m].notna().any()]
    ranked = compared_metrics(present)
    out: dict = {
        "metrics": ranked,
        "descriptive_metrics": [m for m in present if m not in ranked],
        "higher_is_better": {m: True for m in ranked},
        "categories": categories,
        "means": {m: means(scores, m, present, categories, boot) for m in [base, *candidates]},
        "comparisons": {},
        "alignment": None,
    }
    for name in candidates:
        comp = comparisons(paired(scores, base, name, ranked), ranked, categories, boot)
        comp["vlm"] = None
        if judgements is not None and len(judgements):
            rows = judgements[judgements["model"] == name]
            if len(rows):
                comp["vlm"] = _by_scope(rows, categories, lambda r: vlm_comparison(r, boot))
        out["comparisons"][name] = comp
    if "p_yes" in scores and scores["p_yes"].notna().any():
        out["alignment"] = {
            m: _by_scope(scores[scores["model"] == m], categories,
                         lambda r: bootstrap_mean(r["p_yes"].to_numpy(float), r["prompt_id"].to_numpy(), boot).to_json())
            for m in [base, *candidates]
        }
    return out
