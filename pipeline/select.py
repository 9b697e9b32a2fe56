"""The select stage: the kept pairs, capped per prompt, spread over prompts, filled to each category's
quota under the winner-generator cap, given a balanced winner position, and put in a sample order
interleaved across categories so any prefix of the data is balanced. docs/selection.md has the rules.

Vectorised: orderings are integer sorts (pair ids read as uint64, strings factorised once); the only
Python loop is over categories.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from pipeline.catalogue import Table, UnitRecord
from pipeline.phash import hex_words, lookup_ids
from pipeline.stage import StageInputError, TaskStage
from schemas.config import BuildConfig, JudgeConfig
from schemas.tables import DROPPED, JUDGE_KEEPS, selected_schema
from schemas.units import Unit, make_unit

PROMPT_CAP = "prompt_cap"  # more pairs of this prompt than max_pairs_per_prompt
GENERATOR_CAP = "generator_cap"  # its winner's generator already holds its share of the category
OVER_QUOTA = "over_quota"  # the category's quota was already filled by stronger pairs

SELECTION_REPORT = "selection_report.json"  # in the build folder: per category, what was selected and what was not, and why

_SELECT_REASONS = ("", PROMPT_CAP, GENERATOR_CAP, OVER_QUOTA)

DROP_DISAGREES = "vlm_disagrees"  # the VLM's P(winner better) is below judge.min_probability, or it gave no answer
DROP_POSITION_INCONSISTENT = "vlm_position_inconsistent"  # its two orders disagree more than allowed


def judge_keeps(judgements: pa.Table, cfg: JudgeConfig) -> pa.Table:
    """Keep / drop per judged pair (schema `JUDGE_KEEPS`): kept when p_winner >= min_probability and
    position_consistency >= min_position_consistency. Drop reasons: `vlm_disagrees` (p_winner too
    low, or missing: the rater gave no answer) first, else `vlm_position_inconsistent`."""
    pair_ids = judgements.column("pair_id").to_pylist()
    p = judgements.column("p_winner").to_pylist()
    c = judgements.column("position_consistency").to_pylist()
    why = judgements.column("reason").to_pylist() if "reason" in judgements.column_names else [None] * len(p)
    # Compare in float32, the stored precision, so a threshold equal to a stored value keeps it.
    p_min = float(pa.scalar(cfg.min_probability, pa.float32()).as_py())
    c_min = float(pa.scalar(cfg.min_position_consistency, pa.float32()).as_py())
    kept, reasons = [], []
    for pw, pcons, w in zip(p, c, why):
        if w is not None:  # the rater gave no answer: its reason (vlm_no_label, corrupt_media, failed)
            kept.append(False)
            reasons.append(w)
        elif pw is None or not pw >= p_min:
            kept.append(False)
            reasons.append(DROP_DISAGREES)
        elif pcons is None or not pcons >= c_min:
            kept.append(False)
            reasons.append(DROP_POSITION_INCONSISTENT)
        else:
            kept.append(True)
            reasons.append(None)
    return pa.table({"pair_id": pair_ids, "kept": kept, "drop_reason": reasons}, schema=JUDGE_KEEPS)


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
    *,
    categories: list[str] | None = None,
    records: pa.Table | None = None,
) -> Selection:
    """`judged`: the VLM's (judgements, keeps) tables when a rater is configured; its drops keep their reason.
    `candidates` (candidate_id, generator, category): for the generator cap and the per-generator report.
    `categories`: select these only (the build runs one category per unit); `records` (candidate_id,
    record): the shard json's winner / loser records, attached to the selected rows."""
    scorers = cfg.scorer_names
    share = cfg.selection.max_winner_generator_share
    if share is not None and candidates is None:
        raise ValueError("selection.max_winner_generator_share needs the candidates table (winner generators)")
    cats = list(categories or cfg.categories)
    report = {c: r for c, r in _pairing_report(pairs, cfg).items() if c in cats}
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
    df["sort_key"] = _interleave_key(df, cfg.seed)
    df = df.sort_values(["modality", "sort_key", "pair_id"], kind="stable").reset_index(drop=True)
    df["winner_position"] = _winner_position(df, cfg.seed)
    for side in ("winner", "loser"):
        df[f"{side}_record"] = _lookup_records(df[f"{side}_id"], records)
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


def _lookup_records(ids: pd.Series, records: pa.Table | None) -> list:
    if records is None:
        return [None] * len(ids)
    at = pc.index_in(pa.array(ids.tolist(), pa.string()), value_set=records["candidate_id"].combine_chunks())
    if at.null_count:
        missing = ids.iloc[int(np.flatnonzero(at.is_null().to_numpy(zero_copy_only=False))[0])]
        raise ValueError(f"selected candidate {missing} is not in the candidates table")
    return records["record"].combine_chunks().take(at).to_pylist()


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


@dataclass
class SelectStage(TaskStage):
    """One unit per category (quotas, caps and prompt spreading are per category); the winner / loser
    records of the shard json are attached here, where the category's candidates and scores are read."""

    cfg: BuildConfig | None = None
    pairs: Table | None = None
    judgements: Table | None = None  # None: no VLM rater configured
    candidates: Table | None = None
    scores: Table | None = None
    prompts: Table | None = None
    selected: Table | None = None
    dropped: Table | None = None
    score_cols: tuple[str, ...] = ()
    report_path: str = ""

    name: ClassVar[str] = "select"
    verb: ClassVar[str] = "ranked"

    def outputs(self) -> tuple[Table, ...]:
        return (self.selected, self.dropped)

    def plan(self) -> list[Unit]:
        recs = self.need(self.pairs, "pair")
        judged: dict[str, list[str]] = {}
        if self.judgements is not None:
            jrecs = self.judgements.records()
            if not jrecs and any(int(r.unit_stats.extra.get("kept", 0)) for r in recs.values()):
                raise StageInputError(f"stage 'select' needs {self.judgements.folder}; run the 'judge' stage first")
            for r in jrecs.values():
                judged.setdefault(r.cluster or "", []).append(r.id)
        by_cat: dict[str, list] = {}
        for r in recs.values():
            by_cat.setdefault(r.cluster or "", []).append(r)
        c = self.cfg
        rules = (c.selection.model_dump(mode="json"), c.pairing.max_pairs_per_prompt, c.seed, c.shards.split,
                 c.judge.model_dump(mode="json") if c.judge else None, list(self.score_cols))
        units = []
        for cat in c.categories:
            rs = by_cat.get(cat, [])
            kept = sum(int(r.unit_stats.extra.get("kept", 0)) for r in rs)
            units.append(make_unit("select", (cat, c.categories[cat].quota, rules, sorted(r.id for r in rs), sorted(judged.get(cat, []))),
                                   key=cat, rows=kept, category=cat))
        return units

    def process(self, unit: Unit) -> dict[str, pa.Table]:
        from pipeline.records import record_table

        cat = unit.param("category")
        where = ds.field("category") == cat
        pairs = self.pairs.read(filter=where)
        judged = None
        if self.judgements is not None:
            judgements = self.judgements.read(filter=where)
            judged = (judgements, judge_keeps(judgements, self.cfg.judge))
        cands = self.candidates.read(filter=where)
        prompts = self.prompts.read(["prompt_id", "prompt"], filter=where)
        sel = select_pairs(pairs, prompts, self.cfg, judged, candidates=cands.select(["candidate_id", "generator", "category"]),
                           categories=[cat])
        selected = sel.selected
        if selected.num_rows:
            needed = pc.unique(pa.concat_arrays([selected["winner_id"].combine_chunks(), selected["loser_id"].combine_chunks()]))
            records = record_table(cands, self.scores.read(filter=where), list(self.score_cols), needed)
            df = selected.to_pandas()
            for side in ("winner", "loser"):
                df[f"{side}_record"] = _lookup_records(df[f"{side}_id"], records)
            selected = pa.Table.from_pandas(df, schema=selected.schema, preserve_index=False)
        kept = int(pc.sum(pairs["kept"]).as_py() or 0) if pairs.num_rows else 0
        self.count(n_in=kept, n_out=selected.num_rows)
        for row in pc.value_counts(sel.dropped["reason"]).to_pylist() if sel.dropped.num_rows else []:
            self.drop(row["values"], row["counts"])
        self.stats.extra = {"report": sel.report}
        return {self.selected.name: selected, self.dropped.name: sel.dropped}

    def finalize(self, records: dict[str, UnitRecord]) -> str:
        import json
        from pathlib import Path

        from pipeline.store import write_bytes

        report: dict[str, dict] = {}
        for rec in records.values():
            report.update(rec.unit_stats.extra.get("report", {}))
        report = {c: report[c] for c in self.cfg.categories if c in report}
        write_bytes(Path(self.report_path), (json.dumps(report, indent=2, sort_keys=True) + "\n").encode())
        short = {c: r for c, r in report.items() if r["selected"] < r["quota"]}
        note = "; ".join(
            f"{c}: {r['selected']}/{r['quota']}"
            + (f" ({', '.join(f'{k} {n}' for k, n in r['short_because'].items())})" if r["short_because"] else "")
            for c, r in sorted(short.items())
        )
        return f"short of quota: {note}; see {SELECTION_REPORT}" if note else ""
