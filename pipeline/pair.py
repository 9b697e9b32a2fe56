"""The pair stage: every pair within a prompt group, oriented by the reward models' majority, kept only
when at least `quorum` of them prefer the same winner (the cross-model consistency rule)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from schemas.ids import pair_id
from schemas.tables import pairs_schema

# Drop reasons, stored in the pairs table so a build can be explained.
TIE = "tie"  # no scorer separates the two beyond min_margin
NO_MAJORITY = "no_majority"  # as many scorers prefer one as the other
BELOW_QUORUM = "below_quorum"  # a majority, but fewer than `quorum` scorers agree
MISSING_SCORE = "missing_score"


def form_pairs(scores: pa.Table, scorers: list[str], quorum: int, min_margin: float) -> pa.Table:
    """All within-group pairs with margins, agreement and drop reason (vectorised over the groups)."""
    schema = pairs_schema(scorers)
    cols = ["candidate_id", "prompt_id", "category", "modality"] + scorers + [f"{s}_group_std" for s in scorers]
    df = scores.select(cols).to_pandas()
    m = df.merge(df, on=["prompt_id", "category", "modality"], suffixes=("_a", "_b"))
    m = m[m["candidate_id_a"] < m["candidate_id_b"]].reset_index(drop=True)
    if m.empty:
        return schema.empty_table()
    a = m[[f"{s}_a" for s in scorers]].to_numpy(np.float64)
    b = m[[f"{s}_b" for s in scorers]].to_numpy(np.float64)
    std = m[[f"{s}_group_std_a" for s in scorers]].to_numpy(np.float64)
    diff = a - b
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(std > 0, diff / std, 0.0)
    votes_a = (norm > min_margin).sum(axis=1)
    votes_b = (norm < -min_margin).sum(axis=1)
    a_wins = votes_a >= votes_b
    agree = np.where(a_wins, votes_a, votes_b)
    missing = np.isnan(diff).any(axis=1)
    reason = np.select(
        [missing, (votes_a == 0) & (votes_b == 0), votes_a == votes_b, agree < quorum],
        [MISSING_SCORE, TIE, NO_MAJORITY, BELOW_QUORUM],
        default="",
    )
    winner = np.where(a_wins, m["candidate_id_a"], m["candidate_id_b"])
    loser = np.where(a_wins, m["candidate_id_b"], m["candidate_id_a"])
    sign = np.where(a_wins, 1.0, -1.0)[:, None]
    out = pd.DataFrame(
        {
            "pair_id": [pair_id(w, l) for w, l in zip(winner, loser)],
            "prompt_id": m["prompt_id"],
            "category": m["category"],
            "modality": m["modality"],
            "winner_id": winner,
            "loser_id": loser,
        }
    )
    for i, s in enumerate(scorers):
        out[f"margin_{s}"] = (diff * sign)[:, i].astype(np.float32)
    out["agree"] = agree.astype(np.int32)
    out["n_scorers"] = np.int32(len(scorers))
    out["kept"] = reason == ""
    out["drop_reason"] = pd.Series(reason).replace("", None)
    out = out.sort_values("pair_id", kind="stable")
    return pa.Table.from_pandas(out, schema=schema, preserve_index=False)
