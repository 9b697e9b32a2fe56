"""The select stage: the kept pairs, capped per prompt, filled to each category's quota, and put in a
sample order interleaved across categories so any prefix of the data is balanced."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from schemas.config import BuildConfig
from schemas.tables import selected_schema

PROMPT_CAP = "prompt_cap"  # more pairs of this prompt than max_pairs_per_prompt
OVER_QUOTA = "over_quota"  # the category's quota was already filled by stronger pairs

DROPPED = pa.schema([("pair_id", pa.string()), ("category", pa.string()), ("reason", pa.string())])


@dataclass(frozen=True)
class Selection:
    selected: pa.Table
    dropped: pa.Table
    shortfall: dict[str, tuple[int, int]]  # category -> (quota, selected) where it could not be filled


def _interleave_key(df: pd.DataFrame, seed: int) -> np.ndarray:
    """Fractional position of each pair inside its category after a seeded shuffle: sorting by it
    interleaves the categories in proportion to their sizes."""
    key = np.empty(len(df))
    for cat, idx in df.groupby("category", sort=True).indices.items():
        salt = int(hashlib.sha256(f"{seed}:{cat}".encode()).hexdigest()[:8], 16)
        rng = np.random.default_rng(salt)
        perm = rng.permutation(len(idx))
        key[idx] = (perm + rng.random(len(idx))) / len(idx)
    return key


def select_pairs(
    pairs: pa.Table, prompts: pa.Table, cfg: BuildConfig, judged: tuple[pa.Table, pa.Table] | None = None
) -> Selection:
    """`judged`: the VLM's (judgements, keeps) tables when a rater is configured; its drops keep their reason."""
    scorers = cfg.scorer_names
    df = pairs.to_pandas()
    df = df[df["kept"]].sort_values(["category", "agree", "pair_id"], ascending=[True, False, True], kind="stable")
    df = df[df["category"].isin(list(cfg.categories))]
    dropped = []
    if judged is not None:
        judgements, keeps = (t.to_pandas() for t in judged)
        verdict = df[["pair_id", "category"]].merge(keeps, on="pair_id", how="left")
        unjudged = verdict["kept"].isna().to_numpy()
        if unjudged.any():
            raise ValueError(f"{int(unjudged.sum())} consistent pairs have no VLM judgement; rerun the judge stage")
        refused = ~verdict["kept"].astype(bool).to_numpy()
        dropped.append(verdict.loc[refused, ["pair_id", "category", "drop_reason"]].rename(columns={"drop_reason": "reason"}))
        df = df[~refused].merge(judgements[["pair_id", "p_winner"]].rename(columns={"p_winner": "p_vlm"}), on="pair_id", how="left")
    else:
        df = df.assign(p_vlm=np.nan)
    capped = df.groupby("prompt_id").cumcount() >= cfg.pairing.max_pairs_per_prompt
    dropped.append(df.loc[capped, ["pair_id", "category"]].assign(reason=PROMPT_CAP))
    df = df[~capped]
    quota = df["category"].map({c: q.quota for c, q in cfg.categories.items()})
    over = df.groupby("category").cumcount() >= quota
    dropped.append(df.loc[over, ["pair_id", "category"]].assign(reason=OVER_QUOTA))
    df = df[~over].reset_index(drop=True)

    df = df.merge(prompts.select(["prompt_id", "prompt"]).to_pandas(), on="prompt_id", how="left")
    df["split"] = cfg.shards.split
    df["_key"] = _interleave_key(df, cfg.seed)
    df = df.sort_values(["modality", "_key", "pair_id"], kind="stable").reset_index(drop=True)
    df["order"] = df.groupby("modality").cumcount().astype("int64")
    counts = df["category"].value_counts().to_dict()
    shortfall = {c: (q.quota, int(counts.get(c, 0))) for c, q in cfg.categories.items() if counts.get(c, 0) < q.quota}
    schema = selected_schema(scorers)
    return Selection(
        selected=pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False),
        dropped=pa.Table.from_pandas(pd.concat(dropped)[DROPPED.names], schema=DROPPED, preserve_index=False),
        shortfall=shortfall,
    )
