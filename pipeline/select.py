"""The select stage: the kept pairs, capped per prompt, spread over prompts, filled to each category's
quota under the winner-generator cap, given a balanced winner position, and put in a sample order
interleaved across categories so any prefix of the data is balanced. docs/selection.md has the rules.

Vectorised: orderings are integer sorts (pair ids read as uint64, strings factorised once); the only
Python loop is over categories.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.phash import hex_words
from schemas.config import BuildConfig
from schemas.tables import selected_schema

PROMPT_CAP = "prompt_cap"  # more pairs of this prompt than max_pairs_per_prompt
GENERATOR_CAP = "generator_cap"  # its winner's generator already holds its share of the category
OVER_QUOTA = "over_quota"  # the category's quota was already filled by stronger pairs

SELECTION_REPORT = "selection_report.json"  # in the build folder: per category, what was selected and what was not, and why

DROPPED = pa.schema([("pair_id", pa.string()), ("category", pa.string()), ("reason", pa.string())])


@dataclass(frozen=True)
class Selection:
    selected: pa.Table
    dropped: pa.Table
    shortfall: dict[str, tuple[int, int]]  # category -> (quota, selected) where it could not be filled
    report: dict[str, dict] = field(default_factory=dict)  # category -> counts and drops by reason (selection_report.json)


def _interleave_key(df: pd.DataFrame, seed: int) -> np.ndarray:
    """Fractional position of each pair inside its category after a seeded shuffle: sorting by it
    interleaves the categories in proportion to their sizes."""
    key = np.empty(len(df))
    for cat, idx in df.groupby("category", sort=True).indices.items():
        rng = np.random.default_rng(_salt(seed, cat))
        perm = rng.permutation(len(idx))
        key[idx] = (perm + rng.random(len(idx))) / len(idx)
    return key


def _salt(seed: int, name: str) -> int:
    return int(hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()[:8], 16)


def _rank_within(codes: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Each row's 0-based rank among the rows of its code, ranks following `order` (rows outside it: -1)."""
    o = order[np.argsort(codes[order], kind="stable")]
    c = codes[o]
    pos = np.arange(len(o))
    start = np.maximum.accumulate(np.where(np.r_[True, c[1:] != c[:-1]], pos, 0)) if len(o) else pos
    rank = np.full(len(codes), -1, np.int64)
    rank[o] = pos - start
    return rank


def feasible_size(available: np.ndarray, quota: int, share: float | None) -> int:
    """Largest n <= quota that the generators can fill with none above floor(share * n) winners.

    `available`: pairs per winner generator. With no cap it is min(quota, total).
    """
    total = int(available.sum())
    top = min(quota, total)
    if share is None or top == 0:
        return top
    n = np.arange(top + 1)
    cap = np.floor(share * n + 1e-9).astype(np.int64)
    fill = np.minimum(available[None, :], cap[:, None]).sum(axis=1)
    return int(n[fill >= n].max())


def _generator_of(winner_ids: pa.ChunkedArray | pa.Array, candidates: pa.Table) -> np.ndarray:
    idx = pc.index_in(winner_ids, value_set=candidates["candidate_id"].combine_chunks())
    if idx.null_count:
        missing = winner_ids.filter(pc.is_null(idx))[0]
        raise ValueError(f"winner candidate {missing} of the pairs table is not in the candidates table")
    return np.asarray(candidates["generator"].combine_chunks().take(idx).to_numpy(zero_copy_only=False), dtype=object)


def select_pairs(
    pairs: pa.Table,
    prompts: pa.Table,
    cfg: BuildConfig,
    judged: tuple[pa.Table, pa.Table] | None = None,
    candidates: pa.Table | None = None,
) -> Selection:
    """`judged`: the VLM's (judgements, keeps) tables when a rater is configured; its drops keep their reason.
    `candidates` (candidate_id, generator): needed for the generator cap and the per-generator report."""
    scorers = cfg.scorer_names
    share = cfg.selection.max_winner_generator_share
    if share is not None and candidates is None:
        raise ValueError("selection.max_winner_generator_share needs the candidates table (winner generators)")
    cats = list(cfg.categories)
    pairs = pairs.filter(pc.is_in(pairs["category"], value_set=pa.array(cats)))
    report = _pairing_report(pairs, cfg)
    df = pairs.filter(pairs["kept"]).to_pandas()
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
    df = df.reset_index(drop=True)
    gen = _generator_of(pa.array(df["winner_id"], pa.string()), candidates) if candidates is not None else np.full(len(df), "")
    df["winner_generator"] = gen

    # strength: more agreeing reward models, then a surer VLM, then the pair id (a fair pseudo-random tie-break)
    pid_key = hex_words(pa.array(df["pair_id"], pa.string()), 1)[0][:, 0]
    agree = df["agree"].to_numpy()
    p_vlm = np.nan_to_num(df["p_vlm"].to_numpy(np.float64), nan=0.0)
    strength = np.lexsort((pid_key, -p_vlm, -agree))
    prompt_rank = _rank_within(pd.factorize(df["prompt_id"])[0], strength)
    capped = prompt_rank >= cfg.pairing.max_pairs_per_prompt
    reason = np.where(capped, PROMPT_CAP, "").astype(object)

    # priority inside a category: every prompt's best pair before any prompt's second (prompt diversity)
    cat_code = df["category"].map({c: i for i, c in enumerate(cats)}).to_numpy()
    gen_code = pd.factorize(gen)[0]
    live = np.flatnonzero(~capped)
    prio = live[np.lexsort((pid_key[live], -p_vlm[live], -agree[live], prompt_rank[live], cat_code[live]))]
    gen_rank = _rank_within(cat_code * (gen_code.max(initial=0) + 1) + gen_code, prio)
    take = np.zeros(len(df), bool)
    for ci, cat in enumerate(cats):
        rows = prio[cat_code[prio] == ci]
        quota = cfg.categories[cat].quota
        available = np.bincount(gen_code[rows], minlength=gen_code.max(initial=0) + 1)
        n = feasible_size(available, quota, share)
        cap = np.iinfo(np.int64).max if share is None else int(np.floor(share * n + 1e-9))
        eligible = gen_rank[rows] < cap
        chosen = eligible & (np.cumsum(eligible) <= n)
        take[rows[chosen]] = True
        last = int(np.flatnonzero(chosen)[-1]) if chosen.any() else -1
        after = np.arange(len(rows)) > last
        # quota filled: the untaken after the last taken pair were simply not needed; before it, or when the
        # quota is short, they were passed over for their generator
        over = after if n == quota else np.zeros(len(rows), bool)
        reason[rows[~chosen & over]] = OVER_QUOTA
        reason[rows[~chosen & ~over]] = GENERATOR_CAP
    for r in (PROMPT_CAP, GENERATOR_CAP, OVER_QUOTA):
        mask = reason == r
        dropped.append(df.loc[mask, ["pair_id", "category"]].assign(reason=r))
    df = df[take].reset_index(drop=True)

    df = df.merge(prompts.select(["prompt_id", "prompt"]).to_pandas(), on="prompt_id", how="left")
    df["split"] = cfg.shards.split
    df["_key"] = _interleave_key(df, cfg.seed)
    df = df.sort_values(["modality", "_key", "pair_id"], kind="stable").reset_index(drop=True)
    df["order"] = df.groupby("modality").cumcount().astype("int64")
    df["winner_position"] = _winner_position(df, cfg.seed)
    dropped_df = pd.concat(dropped) if dropped else pd.DataFrame(columns=DROPPED.names)
    report = _selection_report(report, df, dropped_df, cfg)
    shortfall = {c: (r["quota"], r["selected"]) for c, r in report.items() if r["selected"] < r["quota"]}
    schema = selected_schema(scorers)
    return Selection(
        selected=pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False),
        dropped=pa.Table.from_pandas(dropped_df[DROPPED.names], schema=DROPPED, preserve_index=False),
        shortfall=shortfall,
        report=report,
    )


def _winner_position(df: pd.DataFrame, seed: int) -> np.ndarray:
    """0 = winner shown first (image_0), 1 = second; alternating in sample order inside each category
    from a seeded start, so every category, and every prefix of it, is balanced to within one pair."""
    start = df["category"].map({c: _salt(seed, f"position:{c}") & 1 for c in df["category"].unique()}).to_numpy(np.int64)
    return ((df.groupby("category").cumcount().to_numpy() + start) % 2).astype(np.int8)


def _pairing_report(pairs: pa.Table, cfg: BuildConfig) -> dict[str, dict]:
    """Per category: the pairs formed and what the pair stage dropped, by reason."""
    counts = pairs.group_by(["category", "drop_reason"]).aggregate([("winner_id", "count")]).to_pylist()
    out = {c: {"quota": q.quota, "pairs_formed": 0, "dropped": {}} for c, q in cfg.categories.items()}
    for row in counts:
        entry = out[row["category"]]
        entry["pairs_formed"] += row["winner_id_count"]
        if row["drop_reason"] is not None:
            entry["dropped"][row["drop_reason"]] = row["winner_id_count"]
    return out


def _selection_report(report: dict, selected: pd.DataFrame, dropped: pd.DataFrame, cfg: BuildConfig) -> dict[str, dict]:
    by_reason = dropped.groupby(["category", "reason"]).size()
    for cat, entry in report.items():
        sel = selected[selected["category"] == cat]
        for (c, r), n in by_reason.items():
            if c == cat:
                entry["dropped"][r] = entry["dropped"].get(r, 0) + int(n)
        entry["dropped"] = dict(sorted(entry["dropped"].items()))
        entry["selected"] = len(sel)
        entry["prompts"] = int(sel["prompt_id"].nunique())
        entry["winner_generators"] = {str(k): int(v) for k, v in sorted(sel["winner_generator"].value_counts().items())}
        entry["winner_position"] = {str(k): int(v) for k, v in sorted(sel["winner_position"].value_counts().items())}
        entry["short"] = max(0, entry["quota"] - entry["selected"])
        # what kept the quota from being filled: every rule that removed pairs (over_quota cannot, by definition)
        entry["short_because"] = (
            {r: n for r, n in entry["dropped"].items() if r != OVER_QUOTA} if entry["short"] else {}
        )
    return report
