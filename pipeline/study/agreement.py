"""`cli.py agreement STUDY`: how well people agree with each other and with vipo's raters.

The ViPO paper validated its raters against people (4,378 annotations by 18 annotators: 87.2% mean
annotator agreement with the majority, 81.2% agreement of the VLM rater with the human consensus).
This module measures the same figures on a study folder (schemas/study.py). Definitions, exactly:

* A vote's label: +1 (prefers a), -1 (prefers b), 0 (tie); skips (preferred null) are dropped.
  First showings only for the agreement figures; repeats (`repeat` true) only for self-consistency.
  Should an annotator have two first showings of one pair, the earlier (lower `seq`) counts.
* Human majority per pair: the sign of the sum of the labels of its first-showing votes. A pair
  whose sum is zero (a tie, or balanced votes) has no majority ("no majority"); a pair with fewer
  than `min_votes` voters (annotators with a label, ties included) is counted ("too_few_votes") but
  excluded from rater agreement.
* Annotator agreement with the majority of the OTHERS (leave-one-out, the paper's "annotator
  agreement with the majority"): for annotator i, over the pairs where i voted non-tie and the sum of
  the other annotators' labels is non-zero (any number of others: `min_votes` does not apply), the
  share where i's label equals the sign of that sum. Reported per annotator, pooled over all
  (annotator, pair) items (each annotator weighted by their pairs; bootstrap interval resampling
  pairs, all annotators of a pair together) and as the unweighted mean of the annotators' shares.
* Inter-annotator agreement: Krippendorff's alpha (nominal; labels a, b, tie; first showings) from
  the `krippendorff` package, and the raw pairwise agreement: over pairs with >= 2 voters, the share
  of unordered annotator pairs of a pair whose labels are equal (pooled over pairs).
  Per-annotator shares (agreement, self-consistency) come with n and their interval's low/high.
* Self-consistency: per annotator, over their labelled repeats of pairs they labelled at first
  showing, the share where the repeat's label equals the first label (ties are labels too);
  overall share with an interval resampling pairs.
* A rater's agreement with the human majority: for rater r, over pairs with a human majority (and
  >= `min_votes` voters) where vote_r is non-null and non-zero, the share where sign(vote_r) equals
  the majority; overall and per category, each with a bootstrap interval resampling pairs and n.
  Coverage: the share of majority pairs that r decides.
* Everything overall and per category (pairs.parquet's `category`).

Intervals are `pipeline.eval.stats.bootstrap_mean`'s (percentile, seeded), so they are reproducible
and mean the same as eval's. The result is JSON-safe: no NaN, None where there is nothing to measure.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.eval.stats import Bootstrap, bootstrap_mean
from schemas.errors import VipoError
from schemas.study import PAIRS_FILE, PREFERRED, VOTE_FIELDS, vote_column

LABELS = {"a": 1.0, "b": -1.0, "tie": 0.0}
_DECIMALS = 6
NO_CATEGORY = "(none)"


def _float(x: float | None) -> float | None:
    """JSON has no NaN: a missing or non-finite number is None; others are rounded like Interval's."""
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), _DECIMALS)


# -- reading ----------------------------------------------------------------------------------------
def read_pairs(folder: str | Path) -> pd.DataFrame:
    """<study>/pairs.parquet; a VipoError naming the file when it is missing or lacks pair_id/category."""
    path = Path(folder) / PAIRS_FILE
    if not path.is_file():
        raise VipoError(f"{path}: no such file (is this a study folder? see docs/human_study.md)")
    try:
        pairs = pd.read_parquet(path)
    except Exception as e:  # a truncated or foreign file: say which
        raise VipoError(f"{path}: not a readable parquet file ({type(e).__name__}: {' '.join(str(e).split())})") from e
    missing = [c for c in ("pair_id", "category") if c not in pairs.columns]
    if missing:
        raise VipoError(f"{path}: missing column(s) {', '.join(missing)}")
    return pairs


def read_study_votes(folder: str | Path) -> pd.DataFrame:
    """Every vote of <study>/votes/<annotator>.jsonl, one row per line with the columns VOTE_FIELDS,
    read by the server's own `VoteLog` (a torn last line is left out; any other bad line raises)."""
    from pipeline.study.votes import VoteLog

    return pd.DataFrame(VoteLog(folder).all_votes(), columns=list(VOTE_FIELDS))


# -- the analysis -----------------------------------------------------------------------------------
def _labelled(votes: pd.DataFrame, pair_ids: pd.Index) -> tuple[pd.DataFrame, int, int]:
    """(labelled votes with a `label` column, skips, votes on pairs not in the study)."""
    votes = votes.reset_index(drop=True)
    skip = votes["preferred"].isna()
    bad = sorted({str(p) for p in votes.loc[~skip, "preferred"] if p not in LABELS})
    if bad:
        raise VipoError(f"votes: preferred must be one of {', '.join(PREFERRED)} or null, got {', '.join(bad[:3])}")
    known = votes["pair_id"].isin(pair_ids)
    out = votes[~skip & known].copy()
    out["label"] = out["preferred"].map(LABELS).astype(np.float64)
    out["repeat"] = out["repeat"].astype(bool)
    if "seq" not in out.columns:
        out["seq"] = np.arange(len(out))
    return out, int(skip.sum()), int((~skip & ~known).sum())


def _first_labels(labelled: pd.DataFrame, pair_ids: pd.Index, annotators: list[str]) -> np.ndarray:
    """(pairs, annotators) matrix of first-showing labels, NaN where an annotator has none."""
    first = labelled[~labelled["repeat"]].sort_values(["annotator", "seq"], kind="stable")
    first = first.drop_duplicates(["pair_id", "annotator"], keep="first")
    matrix = first.pivot(index="pair_id", columns="annotator", values="label")
    return matrix.reindex(index=pair_ids, columns=annotators).to_numpy(dtype=np.float64)


def _leave_one_out(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Items (pair index, annotator index, 1.0/0.0 agreement with the others' majority)."""
    total = np.nansum(labels, axis=1)
    pair_idx, ann_idx, agree = [np.empty(0, np.int64)], [np.empty(0, np.int64)], [np.empty(0)]
    for j in range(labels.shape[1]):
        own = labels[:, j]
        others = np.sign(total - np.nan_to_num(own))
        use = np.flatnonzero((np.abs(own) == 1.0) & (others != 0))
        pair_idx.append(use)
        ann_idx.append(np.full(use.size, j))
        agree.append((own[use] == others[use]).astype(np.float64))
    return np.concatenate(pair_idx), np.concatenate(ann_idx), np.concatenate(agree)


def _alpha(labels: np.ndarray) -> float | None:
    """Krippendorff's nominal alpha of the first labels; None when it is undefined (one value in the
    whole study, or no pair with two voters)."""
    import krippendorff

    try:  # nominal codes need only be distinct: b, tie, a = 1, 2, 3 (NaN: no label)
        return _float(float(krippendorff.alpha(reliability_data=labels.T + 2.0, level_of_measurement="nominal")))
    except ValueError:
        return None


def _pairwise(labels: np.ndarray) -> float | None:
    """Share of unordered annotator pairs (within a pair, >= 2 voters) whose labels are equal."""
    counts = np.stack([(labels == v).sum(axis=1) for v in LABELS.values()], axis=1)
    voters = counts.sum(axis=1)
    total = (voters * (voters - 1) // 2).sum()
    same = (counts * (counts - 1) // 2).sum()
    return _float(same / total) if total else None


def _by_annotator(annotators: list[str], ann_idx: np.ndarray, pair_idx: np.ndarray, values: np.ndarray, key: str,
                  boot: Bootstrap) -> dict:
    """Per annotator: the share (`key`), its n, and its interval's bounds (resampling that annotator's pairs)."""
    out = {}
    for j, a in enumerate(annotators):
        mine = ann_idx == j
        iv = bootstrap_mean(values[mine], pair_idx[mine], boot).to_json()
        out[a] = {key: iv["estimate"], "n": iv["n"], "low": iv["low"], "high": iv["high"]}
    return out


def _self_consistency(labelled: pd.DataFrame, labels: np.ndarray, pair_ids: pd.Index, annotators: list[str],
                      boot: Bootstrap) -> dict:
    """Repeats against the same annotator's first label, ties included."""
    rep = labelled[labelled["repeat"]]
    pair_idx = pair_ids.get_indexer(rep["pair_id"])
    ann_idx = pd.Index(annotators).get_indexer(rep["annotator"])
    first = labels[pair_idx, ann_idx] if len(rep) else np.empty(0)
    keep = ~np.isnan(first)
    same = (rep["label"].to_numpy()[keep] == first[keep]).astype(np.float64)
    return {"overall": bootstrap_mean(same, pair_idx[keep], boot).to_json(),
            "by_annotator": _by_annotator(annotators, ann_idx[keep], pair_idx[keep], same, "consistency", boot)}


def _rater(votes: np.ndarray, majority: np.ndarray, has_majority: np.ndarray, categories: np.ndarray,
           cats: list[str], boot: Bootstrap) -> dict:
    """One rater against the human majority, overall and per category, with its coverage."""
    decided = has_majority & ~np.isnan(votes) & (votes != 0)
    idx = np.flatnonzero(decided)
    agree = (np.sign(votes[idx]) == majority[idx]).astype(np.float64)
    n_major = int(has_majority.sum())
    return {
        "overall": bootstrap_mean(agree, idx, boot).to_json(),
        "coverage": _float(idx.size / n_major) if n_major else None,
        "by_category": {c: bootstrap_mean(agree[categories[idx] == c], idx[categories[idx] == c], boot).to_json()
                        for c in cats},
    }


def _rater_votes(pairs: pd.DataFrame, rater: str) -> np.ndarray:
    col = vote_column(rater)
    if col not in pairs.columns:
        raise VipoError(f"pairs: no column {col} for rater {rater}")
    return pd.to_numeric(pairs[col], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def analyse(pairs: pd.DataFrame, votes: pd.DataFrame, raters: list[str], boot: Bootstrap = Bootstrap(),
            min_votes: int = 2) -> dict:
    """summary.json of a study: the module docstring's figures from pairs.parquet and the votes."""
    if min_votes < 1:
        raise VipoError(f"min_votes: must be >= 1, got {min_votes}")
    pair_ids = pd.Index(pairs["pair_id"].astype(str))
    if pair_ids.has_duplicates:
        raise VipoError(f"pairs: duplicate pair_id {pair_ids[pair_ids.duplicated()][0]}")
    categories = pairs["category"].fillna(NO_CATEGORY).astype(str).to_numpy()
    cats = sorted(set(categories))
    labelled, skips, unknown = _labelled(votes, pair_ids)
    annotators = sorted({str(a) for a in votes["annotator"]})
    labels = _first_labels(labelled, pair_ids, annotators)

    voters = (~np.isnan(labels)).sum(axis=1)
    total = np.nansum(labels, axis=1)
    enough = voters >= min_votes
    has_majority = enough & (total != 0)
    majority = np.where(has_majority, np.sign(total), 0.0)

    pair_idx, ann_idx, agree = _leave_one_out(labels)
    by_ann = _by_annotator(annotators, ann_idx, pair_idx, agree, "agreement", boot)
    shares = [agree[ann_idx == j].mean() for j in range(len(annotators)) if np.any(ann_idx == j)]
    item_cat = categories[pair_idx]
    return {
        "pairs": len(pair_ids),
        "annotators": annotators,
        "votes": int(np.count_nonzero(~np.isnan(labels))),
        "repeat_votes": int(labelled["repeat"].sum()),
        "skips": skips,
        "unknown_pair_votes": unknown,
        "pairs_with_majority": int(has_majority.sum()),
        "no_majority": int((enough & (total == 0)).sum()),
        "too_few_votes": int((~enough).sum()),
        "annotator_agreement": {
            "mean": bootstrap_mean(agree, pair_idx, boot).to_json(),
            "unweighted_mean": _float(float(np.mean(shares))) if shares else None,
            "by_annotator": by_ann,
        },
        "alpha": _alpha(labels),
        "pairwise_agreement": _pairwise(labels),
        "self_consistency": _self_consistency(labelled, labels, pair_ids, annotators, boot),
        "raters": {r: _rater(_rater_votes(pairs, r), majority, has_majority, categories, cats, boot) for r in raters},
        "by_category": {c: {"pairs": int((categories == c).sum()),
                            "pairs_with_majority": int((has_majority & (categories == c)).sum()),
                            "annotator_agreement": bootstrap_mean(agree[item_cat == c], pair_idx[item_cat == c], boot).to_json()}
                        for c in cats},
        "min_votes": int(min_votes),
        "bootstrap": {"resamples": boot.resamples, "confidence": boot.confidence, "seed": boot.seed, "unit": "pair"},
    }
