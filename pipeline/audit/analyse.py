"""Agreement analysis of an audit's score table: pure, vectorised functions of a DataFrame.

A model's *vote* on a pair is sign(score_0 - score_1): +1 prefers image 0, -1 image 1, 0 no
preference (equal scores; it then agrees with nobody). The human vote is +1 when `label_0 = 1`,
-1 when `label_0 = 0`. Only scored rows (no tie, both images decoded) enter the agreement figures.

*Consistent* pair: every model's vote equals the human vote (all agree with each other AND with the
label). *Conflicting*: any other scored pair. Skipped rows are in neither.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pipeline.agreement import vote_agreement
from schemas.audit import SCORED, SKIP_REASONS


def votes(df: pd.DataFrame, scorers: list[str]) -> np.ndarray:
    """(n, m) int8: each model's vote on each row."""
    s0 = df[[f"{s}_0" for s in scorers]].to_numpy(dtype=np.float64)
    s1 = df[[f"{s}_1" for s in scorers]].to_numpy(dtype=np.float64)
    return np.sign(s0 - s1).astype(np.int8)


def human_votes(df: pd.DataFrame) -> np.ndarray:
    """(n,) int8: +1 where the human preferred image 0, -1 where image 1."""
    return np.where(df["label_0"].to_numpy(dtype=np.float64) == 1.0, 1, -1).astype(np.int8)


def conflict_kind(dissent: np.ndarray, scorers: list[str]) -> np.ndarray:
    """Name of each row's set of models voting against the label: "" (none), "<model> alone",
    "a + b" (config order), or "all N against the label"."""
    m = len(scorers)
    names = np.array(scorers, dtype=object)
    out = np.empty(len(dissent), dtype=object)
    codes = dissent.astype(np.int64) @ (1 << np.arange(m))  # one integer per dissent set
    for code in np.unique(codes):
        mask = (code >> np.arange(m)) & 1 == 1
        k = int(mask.sum())
        label = "" if k == 0 else f"all {m} against the label" if k == m else (
            f"{names[mask][0]} alone" if k == 1 else " + ".join(names[mask]))
        out[codes == code] = label
    return out


def classify(df: pd.DataFrame, scorers: list[str]) -> pd.DataFrame:
    """Scored rows with `consistent` (bool), `dissenters` (int) and `kind` (str) added."""
    scored = df[df["status"] == SCORED].reset_index(drop=True)
    v, h = votes(scored, scorers), human_votes(scored)
    dissent = v != h[:, None]
    return scored.assign(
        consistent=~dissent.any(axis=1),
        dissenters=dissent.sum(axis=1).astype(np.int64),
        kind=conflict_kind(dissent, scorers),
    )


def _share(k: float, n: int) -> float | None:
    return float(k) / n if n else None


def pairwise_agreement(v: np.ndarray) -> list[list[float | None]]:
    """(m, m) share of the rows on which models i and j both have a preference where it is the same one
    (`pipeline.agreement.vote_agreement`, the dataset card's definition); None where they never both do."""
    share, _ = vote_agreement(v)
    return [[None if np.isnan(x) else round(float(x), 6) for x in row] for row in share]


def source_breakdown(scored: pd.DataFrame, scorers: list[str]) -> dict[str, dict[str, Any]]:
    """Per source model (a pair counts for each distinct model of `model_0` / `model_1`): pairs,
    consistent pairs and each reward model's agreement with the label."""
    if scored.empty:
        return {}
    h = human_votes(scored)
    agree = votes(scored, scorers) == h[:, None]
    base = pd.DataFrame(agree, columns=scorers).assign(consistent=scored["consistent"].to_numpy(), pair=np.arange(len(scored)))
    long = pd.concat([base.assign(source=scored["model_0"].fillna("(unknown)").to_numpy()),
                      base.assign(source=scored["model_1"].fillna("(unknown)").to_numpy())])
    long = long.drop_duplicates(["pair", "source"])
    g = long.groupby("source", sort=True)
    n = g.size()
    means = g[[*scorers, "consistent"]].mean()
    sums = g["consistent"].sum()
    return {
        str(src): {
            "pairs": int(n[src]),
            "consistent": int(sums[src]),
            "consistent_share": float(means.loc[src, "consistent"]),
            "agreement_with_label": {s: float(means.loc[src, s]) for s in scorers},
        }
        for src in n.index
    }


def summarise(df: pd.DataFrame, scorers: list[str]) -> dict[str, Any]:
    """Every figure of summary.json from the score table (one row per input pair)."""
    status = df["status"].value_counts()
    skipped = {r: int(status.get(r, 0)) for r in SKIP_REASONS}
    scored = classify(df, scorers)
    n = len(scored)
    v, h = votes(scored, scorers), human_votes(scored)
    agree_label = v == h[:, None]
    unanimous = (v == v[:, :1]).all(axis=1) & (v[:, 0] != 0) if n else np.zeros(0, dtype=bool)
    majority = agree_label.sum(axis=1) * 2 > len(scorers)
    kinds = scored.loc[~scored["consistent"], "kind"].value_counts()
    kinds = kinds.sort_index().sort_values(ascending=False, kind="stable")  # count desc, then name
    return {
        "pairs_read": len(df),
        "pairs_scored": n,
        "pairs_skipped": int(sum(skipped.values())),
        "skipped": skipped,
        "reward_models": list(scorers),
        "agreement_with_label": {s: _share(int(agree_label[:, i].sum()), n) for i, s in enumerate(scorers)},
        "all_agree_with_each_other": {"pairs": int(unanimous.sum()), "share": _share(int(unanimous.sum()), n)},
        "all_agree_with_label": {"pairs": int(scored["consistent"].sum()), "share": _share(int(scored["consistent"].sum()), n)},
        "majority_agrees_with_label": {"pairs": int(majority.sum()), "share": _share(int(majority.sum()), n)},
        "pairwise_agreement": {"models": list(scorers), "matrix": pairwise_agreement(v) if n else None},
        "conflicts": {"pairs": int(n - scored["consistent"].sum()), "kinds": {str(k): int(c) for k, c in kinds.items()}},
        "by_source_model": source_breakdown(scored, scorers),
    }
