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

from pipeline.phash import hex_words, lookup_ids
from schemas.config import BuildConfig
from schemas.tables import selected_schema

PROMPT_CAP = "prompt_cap"  # more pairs of this prompt than max_pairs_per_prompt
GENERATOR_CAP = "generator_cap"  # its winner's generator already holds its share of the category
OVER_QUOTA = "over_quota"  # the category's quota was already filled by stronger pairs

SELECTION_REPORT = "selection_report.json"  # in the build folder: per category, what was selected and what was not, and why

_SELECT_REASONS = ("", PROMPT_CAP, GENERATOR_CAP, OVER_QUOTA)

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
    o = _then_by(order, codes)
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


def _then_by(order: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Re-sort `order` stably by `key` (small non-negative ints sort by radix: linear time)."""
    k = key[order]
    if k.size and k.max(initial=0) < 2**15 and k.min(initial=0) >= 0:
        k = k.astype(np.int16)
    return order[np.argsort(k, kind="stable")]


def _generator_codes(kept: pa.Table, candidates: pa.Table | None, cats: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(generator names, winner's generator code per pair, generators serving each category)."""
    if candidates is None:
        return [""], np.zeros(kept.num_rows, np.int64), np.ones(len(cats), np.int64)
    at = lookup_ids(kept["winner_id"], candidates["candidate_id"])
    if at is None:  # ids that are not 16-hex (hand-made tables): Arrow's hash lookup
        found = pc.index_in(kept["winner_id"], value_set=candidates["candidate_id"].combine_chunks())
        at = found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    if (at < 0).any():
        missing = kept["winner_id"][int(np.flatnonzero(at < 0)[0])]
        raise ValueError(f"winner candidate {missing} of the pairs table is not in the candidates table")
    enc = pc.dictionary_encode(candidates["generator"].combine_chunks())
    gen = enc.indices.to_numpy(zero_copy_only=False)
    names = enc.dictionary.to_pylist()
    serving = np.ones(len(cats), np.int64)
    if "category" in candidates.column_names:  # generators with a candidate in the category
        cat = pc.index_in(candidates["category"], value_set=pa.array(cats, pa.string())).fill_null(len(cats))
        combos = np.unique(cat.to_numpy(zero_copy_only=False).astype(np.int64) * len(names) + gen)
        serving = np.maximum(np.bincount(combos // len(names), minlength=len(cats) + 1)[: len(cats)], 1)
    return names, gen[at], serving


def select_pairs(
    pairs: pa.Table,
    prompts: pa.Table,
    cfg: BuildConfig,
    judged: tuple[pa.Table, pa.Table] | None = None,
    candidates: pa.Table | None = None,
) -> Selection:
    """`judged`: the VLM's (judgements, keeps) tables when a rater is configured; its drops keep their reason.
    `candidates` (candidate_id, generator, category): for the generator cap and the per-generator report."""
    scorers = cfg.scorer_names
    share = cfg.selection.max_winner_generator_share
    if share is not None and candidates is None:
        raise ValueError("selection.max_winner_generator_share needs the candidates table (winner generators)")
    cats = list(cfg.categories)
    report = _pairing_report(pairs, cfg)
    kt = pairs.filter(pairs["kept"])
    kt = kt.filter(pc.is_in(kt["category"], value_set=pa.array(cats, pa.string()))).combine_chunks()
    n = kt.num_rows
    alive = np.ones(n, bool)
    p_vlm = np.full(n, np.nan)
    drops: list[tuple[np.ndarray, pa.Array]] = []  # (rows of kt, reason per row)
    if judged is not None:
        judgements, keeps = judged
        ids = kt["pair_id"].combine_chunks()
        at = pc.index_in(ids, value_set=keeps["pair_id"].combine_chunks())
        if at.null_count:
            raise ValueError(f"{at.null_count} consistent pairs have no VLM judgement; rerun the judge stage")
        ok = keeps["kept"].combine_chunks().take(at).to_numpy(zero_copy_only=False).astype(bool)
        refused = np.flatnonzero(~ok)
        drops.append((refused, keeps["drop_reason"].combine_chunks().take(at).take(pa.array(refused))))
        alive &= ok
        jat = pc.index_in(ids, value_set=judgements["pair_id"].combine_chunks())
        p_vlm = judgements["p_winner"].combine_chunks().take(jat).to_numpy(zero_copy_only=False).astype(np.float64)
    names, wgen, serving = _generator_codes(kt, candidates, cats)
    n_gen = len(names)

    # strength: more agreeing reward models, then a surer VLM, then the pair id (a fair pseudo-random tie-break)
    pid_key = hex_words(kt["pair_id"], 1)[0][:, 0]
    agree = kt["agree"].to_numpy()
    surer = np.nan_to_num(p_vlm, nan=0.0)
    prompt_code = pc.dictionary_encode(kt["prompt_id"].combine_chunks()).indices.to_numpy()
    cat_code = pc.index_in(kt["category"], value_set=pa.array(cats, pa.string())).to_numpy()
    rows = np.flatnonzero(alive)
    strength = rows[np.argsort(pid_key[rows], kind="stable")]
    if judged is not None:
        strength = strength[np.argsort(-surer[strength], kind="stable")]
    strength = _then_by(strength, agree.max(initial=0) - agree)
    prompt_rank = _rank_within(prompt_code, strength)
    reason = np.zeros(n, np.int8)  # index into _SELECT_REASONS; 0: selected or refused by the VLM
    reason[alive & (prompt_rank >= cfg.pairing.max_pairs_per_prompt)] = 1

    # priority inside a category: every prompt's best pair before any prompt's second (prompt diversity)
    prio = strength[reason[strength] == 0]
    prio = _then_by(_then_by(prio, prompt_rank), cat_code)
    gen_rank = _rank_within(cat_code * n_gen + wgen, prio)
    take = np.zeros(n, bool)
    for ci, cat in enumerate(cats):
        mine = prio[cat_code[prio] == ci]
        quota = cfg.categories[cat].quota
        # k generators cannot split a category more evenly than 1/k each: a lower cap is raised to that
        cat_share = None if share is None else max(share, 1.0 / max(int(serving[ci]), 1))
        size = feasible_size(np.bincount(wgen[mine], minlength=n_gen), quota, cat_share)
        cap = np.iinfo(np.int64).max if cat_share is None else int(np.floor(cat_share * size + 1e-9))
        eligible = gen_rank[mine] < cap
        chosen = eligible & (np.cumsum(eligible) <= size)
        take[mine[chosen]] = True
        last = int(np.flatnonzero(chosen)[-1]) if chosen.any() else -1
        # quota filled: the untaken after the last taken pair were simply not needed; before it, or when the
        # quota is short, they were passed over for their generator
        over = (np.arange(len(mine)) > last) if size == quota else np.zeros(len(mine), bool)
        reason[mine[~chosen & over]] = 3
        reason[mine[~chosen & ~over]] = 2
    for code in (1, 2, 3):
        idx = np.flatnonzero(reason == code)
        drops.append((idx, pa.array(np.full(len(idx), _SELECT_REASONS[code], object), pa.string())))

    picked = np.flatnonzero(take)
    df = kt.take(pa.array(picked)).to_pandas()
    df["p_vlm"] = p_vlm[picked]
    df["winner_generator"] = np.asarray(names, object)[wgen[picked]]
    df = df.merge(prompts.select(["prompt_id", "prompt"]).to_pandas(), on="prompt_id", how="left")
    df["split"] = cfg.shards.split
    df["_key"] = _interleave_key(df, cfg.seed)
    df = df.sort_values(["modality", "_key", "pair_id"], kind="stable").reset_index(drop=True)
    df["order"] = df.groupby("modality").cumcount().astype("int64")
    df["winner_position"] = _winner_position(df, cfg.seed)
    idx = np.concatenate([d[0] for d in drops]).astype(np.int64) if drops else np.empty(0, np.int64)
    dropped = pa.table(
        {
            "pair_id": kt["pair_id"].take(pa.array(idx)),
            "category": kt["category"].take(pa.array(idx)),
            "reason": pa.concat_arrays([d[1] for d in drops]) if drops else pa.array([], pa.string()),
        },
        schema=DROPPED,
    )
    report = _selection_report(report, df, dropped, cfg)
    shortfall = {c: (r["quota"], r["selected"]) for c, r in report.items() if r["selected"] < r["quota"]}
    schema = selected_schema(scorers)
    return Selection(
        selected=pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False),
        dropped=dropped,
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
        if row["category"] not in out:  # a category this config does not build
            continue
        entry = out[row["category"]]
        entry["pairs_formed"] += row["winner_id_count"]
        if row["drop_reason"] is not None:
            entry["dropped"][row["drop_reason"]] = row["winner_id_count"]
    return out


def _selection_report(report: dict, selected: pd.DataFrame, dropped: pa.Table, cfg: BuildConfig) -> dict[str, dict]:
    counts = dropped.group_by(["category", "reason"]).aggregate([("pair_id", "count")]).to_pylist()
    for row in counts:
        entry = report[row["category"]]
        entry["dropped"][row["reason"]] = entry["dropped"].get(row["reason"], 0) + row["pair_id_count"]
    for cat, entry in report.items():
        sel = selected[selected["category"] == cat]
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
