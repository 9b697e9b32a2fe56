"""Statistics of `cli.py eval`: means, paired win rates and sign tests with honest intervals.

`eval` renders every prompt with k seeds for the base model and for each candidate, and scores every
image. Three choices follow from that design (docs/eval.md, "Intervals", explains them for users):

* cluster bootstrap by prompt: the k images of one prompt share the prompt's difficulty, so they are
  correlated. Resampling images as if independent would make intervals too narrow by up to sqrt(k);
  resampling whole prompts (all their seeds move together) keeps the interval honest;
* ties count one half in the win rate, so identical models score exactly 0.5 and a tie neither helps
  nor hurts a candidate;
* the sign test drops ties: a tie says nothing about which model is better, and the exact test
  conditions on the decided pairs, Binomial(wins + losses, 1/2) under "no difference".

Everything is seeded (`Bootstrap.seed`) and independent of the order of the rows, so the same eval
reports the same intervals. The bootstrap draws its resamples in chunks, so memory stays bounded
(about 12 bytes per cluster and chunk row) however many resamples are asked for.
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

ArrayLike = Sequence[float] | np.ndarray
Labels = Sequence[Hashable] | np.ndarray | None

# Elements drawn per chunk of resamples (int32 draws + float64 gathers: ~12 MB), but at least one full
# resample per chunk. Chunks only bound memory: the draws, so the interval, do not depend on them.
_DRAWS_PER_CHUNK = 1 << 20
# The sign test sums the binomial tail only over terms within exp(-_TAIL_LOG_DROP) of its largest
# term; the rest together weigh under n * exp(-_TAIL_LOG_DROP) of the sum (< 1e-25 for n = 1e9).
_TAIL_LOG_DROP = 80.0
_DECIMALS = 6


def _finite_or_none(x: float | None) -> float | None:
    """JSON has no NaN or infinity: a non-finite number is reported as missing."""
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), _DECIMALS)


@dataclass(frozen=True)
class Interval:
    """An estimate with its bootstrap interval; n counts items (images or pairs), not clusters."""

    estimate: float | None
    low: float | None
    high: float | None
    n: int

    def to_json(self) -> dict:
        """A JSON-safe dict (rounded floats, None for missing or non-finite: never NaN)."""
        return {"estimate": _finite_or_none(self.estimate), "low": _finite_or_none(self.low),
                "high": _finite_or_none(self.high), "n": int(self.n)}

    def contains(self, x: float) -> bool:
        """Whether x lies in [low, high]; an empty interval (n == 0) contains nothing."""
        if self.low is None or self.high is None:
            return False
        return self.low <= x <= self.high


@dataclass(frozen=True)
class Bootstrap:
    """How intervals are drawn: percentile bootstrap, seeded so that reports are reproducible."""

    resamples: int = 2000
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self):
        if self.resamples < 1:
            raise ValueError(f"resamples must be >= 1, got {self.resamples}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")


def _as_vector(values: ArrayLike, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def _cluster_totals(values: np.ndarray, clusters: Labels) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster (sums, sizes), clusters ordered by label and each sum added in sorted order.

    Sorting makes the result a function of the set of rows, not of their order: the same data in
    another order gives bit-identical sums, hence an identical interval.
    """
    if clusters is None:
        ordered = np.sort(values)
        return ordered, np.ones(ordered.size, dtype=np.int64)
    _, inverse = np.unique(clusters, return_inverse=True)
    inverse = inverse.ravel()
    order = np.lexsort((values, inverse))
    ordered, labels = values[order], inverse[order]
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
    return np.add.reduceat(ordered, starts), np.diff(np.r_[starts, ordered.size])


def _resample_means(sums: np.ndarray, sizes: np.ndarray, boot: Bootstrap) -> np.ndarray:
    """Item-weighted means of `boot.resamples` cluster resamples: sum(sums[drawn]) / sum(sizes[drawn]).

    Drawing C cluster indices and gathering equals weighting each cluster by its multinomial count,
    without a (resamples x C) matrix: chunks hold at most `_DRAWS_PER_CHUNK` draws (or one resample).
    """
    n_clusters = sums.size
    equal_sizes = bool(np.all(sizes == sizes[0]))
    weights = None if equal_sizes else sizes.astype(np.float64)
    rows = max(1, _DRAWS_PER_CHUNK // n_clusters)
    index_type = np.int32 if n_clusters <= np.iinfo(np.int32).max else np.int64
    rng = np.random.default_rng(boot.seed)
    means = np.empty(boot.resamples, dtype=np.float64)
    for start in range(0, boot.resamples, rows):
        count = min(rows, boot.resamples - start)
        drawn = rng.integers(0, n_clusters, size=(count, n_clusters), dtype=index_type)
        totals = sums[drawn].sum(axis=1)
        items = n_clusters * float(sizes[0]) if equal_sizes else weights[drawn].sum(axis=1)
        means[start:start + count] = totals / items
    return means


def bootstrap_mean(values: ArrayLike, clusters: Labels = None, boot: Bootstrap = Bootstrap()) -> Interval:
    """Item mean of `values` with a cluster-bootstrap percentile interval (NaN values dropped).

    `clusters` (labels aligned with values, e.g. prompt ids) are resampled with replacement, all items
    of a cluster together, because items of one cluster are correlated; without them each item is
    its own cluster. Labels are sorted (`np.unique`, a few copies of them): integer codes or object
    strings (as Arrow columns convert) cost least, wide fixed-width numpy strings most.
    """
    values = _as_vector(values, "values")
    if clusters is not None:
        clusters = np.asarray(clusters)
        if clusters.shape != values.shape:
            raise ValueError(f"clusters has shape {clusters.shape}, values {values.shape}: they must be aligned")
    missing = np.isnan(values)
    if missing.any():
        values = values[~missing]
        clusters = None if clusters is None else clusters[~missing]
    if values.size == 0:
        return Interval(None, None, None, 0)
    if values.min() == values.max():
        # Every resample has this mean exactly; skipping the draws avoids rounding around it.
        value = float(values[0])
        return Interval(value, value, value, int(values.size))
    sums, sizes = _cluster_totals(values, clusters)
    estimate = float(sums.sum() / values.size)
    if sums.size == 1:
        return Interval(estimate, estimate, estimate, int(values.size))
    tail = (1.0 - boot.confidence) / 2.0
    low, high = np.quantile(_resample_means(sums, sizes, boot), [tail, 1.0 - tail])
    return Interval(estimate, float(low), float(high), int(values.size))


def paired_outcomes(candidate: ArrayLike, base: ArrayLike) -> np.ndarray:
    """Per pair 1.0 (candidate higher), 0.0 (lower) or 0.5 (tie); NaN where either score is missing.

    Ties are worth one half so that a candidate identical to the base has win rate exactly 0.5.
    """
    candidate, base = _as_vector(candidate, "candidate"), _as_vector(base, "base")
    if candidate.shape != base.shape:
        raise ValueError(f"candidate has shape {candidate.shape}, base {base.shape}: pairs must be aligned")
    outcomes = np.where(candidate > base, 1.0, np.where(candidate < base, 0.0, 0.5))
    outcomes[np.isnan(candidate) | np.isnan(base)] = np.nan
    return outcomes


def win_rate(candidate: ArrayLike, base: ArrayLike, clusters: Labels = None, boot: Bootstrap = Bootstrap()) -> Interval:
    """Share of pairs the candidate wins (ties count half, NaN pairs dropped), cluster-bootstrap interval."""
    return bootstrap_mean(paired_outcomes(candidate, base), clusters, boot)


def _log_half_binomial_pmf(n: int, k: np.ndarray) -> np.ndarray:
    """log P(X = k) for X ~ Binomial(n, 1/2), in log space so that n = 10^7 neither overflows nor underflows."""
    log_gamma = np.frompyfunc(math.lgamma, 1, 1)
    log_choose = math.lgamma(n + 1) - log_gamma(k + 1).astype(np.float64) - log_gamma(n - k + 1).astype(np.float64)
    return log_choose - n * math.log(2.0)


def _tail_window(n: int, m: int) -> int:
    """The smallest k whose term P(X = k) can still matter next to P(X = m), for m <= n / 2.

    The terms fall going down from m: P(X = k - 1) / P(X = k) = k / (n - k + 1) <= exp(-4 (m - k) / n),
    so j steps down lose at least 2 j (j - 1) / n in log, and j = sqrt(n * drop / 2) + 1 steps reach
    `_TAIL_LOG_DROP`. Near n / 2 that is ~sqrt(40 n) terms (2e4 at n = 10^7), far from it fewer matter.
    """
    steps = math.isqrt(int(math.ceil(n * _TAIL_LOG_DROP / 2.0))) + 2
    return max(0, m - steps)


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign test p-value, Binomial(wins + losses, 1/2); ties must be dropped before.

    p = min(1, 2 P(X <= min(wins, losses))), the tail summed in log space (stable logsumexp); 1.0
    when there is no decided pair or wins == losses.
    """
    if wins < 0 or losses < 0:
        raise ValueError(f"wins and losses must be >= 0, got {wins}, {losses}")
    n, m = int(wins) + int(losses), min(int(wins), int(losses))
    if n == 0 or wins == losses:
        return 1.0
    k = np.arange(_tail_window(n, m), m + 1, dtype=np.int64)
    log_terms = _log_half_binomial_pmf(n, k)
    top = float(log_terms.max())
    log_tail = top + math.log(float(np.exp(log_terms - top).sum()))
    return min(1.0, math.exp(math.log(2.0) + log_tail))


def compare(candidate: ArrayLike, base: ArrayLike, clusters: Labels = None, boot: Bootstrap = Bootstrap(),
            alpha: float = 0.05) -> dict:
    """Candidate vs base on the same prompts and seeds: win rate, counts, sign test, mean difference.

    JSON-safe. `sign_test_p` is None when no pair is decided (nothing to test), and `significant` is
    then False.
    """
    outcomes = paired_outcomes(candidate, base)
    wins, losses, ties = (int(np.count_nonzero(outcomes == v)) for v in (1.0, 0.0, 0.5))
    p_value = sign_test(wins, losses) if wins + losses else None
    difference = _as_vector(candidate, "candidate") - _as_vector(base, "base")
    return {
        "win_rate": bootstrap_mean(outcomes, clusters, boot).to_json(),
        "wins": wins, "losses": losses, "ties": ties,
        "sign_test_p": p_value,
        "mean_difference": bootstrap_mean(difference, clusters, boot).to_json(),
        "significant": p_value is not None and p_value < alpha,
    }
