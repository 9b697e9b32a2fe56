"""pipeline/eval/stats.py: intervals, win rates and the sign test against hand-computed and exact values.

The sign test is checked against scipy's exact binomial test; bootstrap intervals against cases whose
resampling distribution can be enumerated by hand, and against the normal theory they should approach.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import binomtest

from pipeline.eval import stats
from pipeline.eval.stats import Bootstrap, Interval, bootstrap_mean, compare, paired_outcomes, sign_test, win_rate

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile, for the width checks


def width(interval: Interval) -> float:
    return interval.high - interval.low


# ----------------------------------------------------------------------------- sign test

SIGN_CASES = [(0, 0), (1, 0), (0, 1), (5, 5), (5, 4), (0, 20), (20, 0), (3, 17), (17, 3), (60, 40), (7, 13),
              (50, 50), (0, 1000), (5000, 5100), (1, 10**6)]


@pytest.mark.parametrize("wins, losses", SIGN_CASES)
def test_sign_test_matches_scipy(wins, losses):
    expected = binomtest(wins, wins + losses, 0.5).pvalue if wins + losses else 1.0
    assert sign_test(wins, losses) == pytest.approx(expected, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("wins, losses", [(500_000, 501_000), (4_990_000, 5_010_000), (100_000, 101_500)])
def test_sign_test_large_balanced(wins, losses):
    # log C(n, k) from math.lgamma carries ~n log(n) * eps of absolute error, so 1e-7 relative at 10^7.
    expected = binomtest(wins, wins + losses, 0.5).pvalue
    assert sign_test(wins, losses) == pytest.approx(expected, rel=1e-7)


def test_sign_test_edges():
    assert sign_test(0, 0) == 1.0
    assert sign_test(7, 7) == 1.0
    assert sign_test(3, 10**7) == 0.0  # underflows to 0 without overflow or a warning
    assert sign_test(3, 17) == sign_test(17, 3)
    assert sign_test(0, 2) == pytest.approx(0.5)  # 2 * (1/2)^2
    with pytest.raises(ValueError):
        sign_test(-1, 3)


# ----------------------------------------------------------------------------- paired outcomes, win rate

def test_paired_outcomes():
    out = paired_outcomes([1.0, 2.0, np.nan, 3.0, 0.0, np.inf], [0.0, 2.0, 1.0, np.nan, 1.0, np.inf])
    np.testing.assert_array_equal(out, [1.0, 0.5, np.nan, np.nan, 0.0, 0.5])
    with pytest.raises(ValueError):
        paired_outcomes([1.0, 2.0], [1.0])


def test_win_rate_hand_computed():
    # outcomes: 1, 0, 0.5 (tie), 1, NaN (dropped, with its prompt "c").
    # Prompt a: sum 1 over 2 pairs, b: sum 1.5 over 2. Resamples of two prompts: aa 0.5 (1/4), ab 0.625 (1/2),
    # bb 0.75 (1/4), so the 2.5% and 97.5% quantiles are exactly 0.5 and 0.75.
    candidate, base = [3.0, 1.0, 2.0, 4.0, np.nan], [1.0, 2.0, 2.0, 0.0, 1.0]
    interval = win_rate(candidate, base, clusters=["a", "a", "b", "b", "c"])
    assert interval == Interval(0.625, 0.5, 0.75, 4)
    assert interval.to_json() == {"estimate": 0.625, "low": 0.5, "high": 0.75, "n": 4}


def test_win_rate_weights_items_not_clusters():
    # Prompt a: outcomes 1, 0, 1 (3 pairs), b: 0 (1 pair). Resample ab is 2/4 = 0.5 item-weighted
    # (1/3 as a mean of prompt means) and has probability 1/2, covering the 40% and 60% quantiles.
    interval = win_rate([1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0], clusters=[7, 7, 7, 9], boot=Bootstrap(confidence=0.2))
    assert interval == Interval(0.5, 0.5, 0.5, 4)


def test_win_rate_identical_models_is_exactly_half():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=400)
    prompts = np.repeat(np.arange(200), 2)
    interval = win_rate(scores, scores.copy(), clusters=prompts)
    assert interval == Interval(0.5, 0.5, 0.5, 400)
    assert interval.contains(0.5)
    result = compare(scores, scores.copy(), clusters=prompts)
    assert (result["wins"], result["losses"], result["ties"]) == (0, 0, 400)
    assert result["sign_test_p"] is None and result["significant"] is False


def test_win_rate_planted_better_candidate():
    rng = np.random.default_rng(2)
    prompts = np.repeat(np.arange(200), 2)
    base = np.repeat(rng.normal(size=200), 2) + rng.normal(scale=0.5, size=400)
    candidate = base + 0.3 + rng.normal(scale=0.5, size=400)
    interval = win_rate(candidate, base, clusters=prompts)
    assert interval.low > 0.5
    assert interval.contains(interval.estimate)
    result = compare(candidate, base, clusters=prompts)
    assert result["significant"] and result["sign_test_p"] < 1e-6
    assert result["mean_difference"]["low"] > 0


# ----------------------------------------------------------------------------- bootstrap_mean

def test_bootstrap_mean_normal_width():
    mu, sigma, n = 1.0, 2.0, 20_000
    values = np.random.default_rng(3).normal(mu, sigma, size=n)
    interval = bootstrap_mean(values)
    assert interval.contains(mu)
    assert interval.estimate == pytest.approx(values.mean(), rel=1e-12)
    assert width(interval) == pytest.approx(2 * Z95 * sigma / math.sqrt(n), rel=0.10)


def test_bootstrap_mean_correlated_clusters_are_sqrt_k_wider():
    k, prompts = 4, 2000
    per_prompt = np.random.default_rng(4).normal(size=prompts)
    values = np.repeat(per_prompt, k)  # the k items of a prompt are equal: perfectly correlated
    labels = np.repeat([f"p{i:05d}" for i in range(prompts)], k)
    clustered, naive = bootstrap_mean(values, labels), bootstrap_mean(values)
    assert clustered.estimate == pytest.approx(naive.estimate, rel=1e-12)
    assert clustered.n == naive.n == k * prompts
    assert width(clustered) / width(naive) == pytest.approx(math.sqrt(k), rel=0.15)


def test_bootstrap_mean_is_deterministic_and_order_free():
    rng = np.random.default_rng(5)
    values = rng.normal(size=3000)
    labels = rng.choice([f"prompt-{i}" for i in range(700)], size=3000)
    first = bootstrap_mean(values, labels, Bootstrap(seed=11))
    assert bootstrap_mean(values, labels, Bootstrap(seed=11)) == first
    assert bootstrap_mean(values, labels, Bootstrap(seed=12)) != first
    order = rng.permutation(values.size)
    assert bootstrap_mean(values[order], labels[order], Bootstrap(seed=11)) == first
    # Without clusters too: the rows are sorted before drawing.
    assert bootstrap_mean(values[order], boot=Bootstrap(seed=11)) == bootstrap_mean(values, boot=Bootstrap(seed=11))


def test_bootstrap_chunks_do_not_change_the_interval(monkeypatch):
    values = np.random.default_rng(6).normal(size=500)
    labels = np.arange(500) // 3
    whole = bootstrap_mean(values, labels, Bootstrap(resamples=300))
    monkeypatch.setattr(stats, "_DRAWS_PER_CHUNK", 1000)  # 5 resamples per chunk instead of all 300
    assert bootstrap_mean(values, labels, Bootstrap(resamples=300)) == whole
    monkeypatch.setattr(stats, "_DRAWS_PER_CHUNK", 1)  # one resample per chunk
    assert bootstrap_mean(values, labels, Bootstrap(resamples=300)) == whole


def test_bootstrap_mean_drops_nan():
    values, labels = [1.0, np.nan, 3.0, 6.0], ["a", "b", "c", "c"]
    dropped = bootstrap_mean(values, labels)
    assert dropped == bootstrap_mean([1.0, 3.0, 6.0], ["a", "c", "c"])
    assert dropped.n == 3 and dropped.estimate == pytest.approx(10.0 / 3.0)


@pytest.mark.parametrize("values", [[], [np.nan, np.nan]])
def test_bootstrap_mean_empty(values):
    interval = bootstrap_mean(values, clusters=["x"] * len(values))
    assert interval == Interval(None, None, None, 0)
    assert interval.to_json() == {"estimate": None, "low": None, "high": None, "n": 0}
    assert not interval.contains(0.0)


def test_bootstrap_mean_degenerate():
    assert bootstrap_mean([1.0, 2.0, 6.0], clusters=["only"] * 3) == Interval(3.0, 3.0, 3.0, 3)
    assert bootstrap_mean([5.0]) == Interval(5.0, 5.0, 5.0, 1)
    assert bootstrap_mean([0.1] * 7) == Interval(0.1, 0.1, 0.1, 7)


def test_bootstrap_mean_rejects_misaligned_clusters():
    with pytest.raises(ValueError):
        bootstrap_mean([1.0, 2.0, 3.0], clusters=["a", "b"])
    with pytest.raises(ValueError):
        Bootstrap(confidence=1.0)
    with pytest.raises(ValueError):
        Bootstrap(resamples=0)


def test_bootstrap_coverage():
    # 200 seeded datasets of 100 normal items: the 95% percentile interval should cover the mean ~94% of
    # the time (percentile intervals run a little narrow at n = 100).
    rng = np.random.default_rng(7)
    covered = sum(bootstrap_mean(rng.normal(2.0, 1.5, size=100), boot=Bootstrap(seed=i)).contains(2.0) for i in range(200))
    assert 0.88 <= covered / 200 <= 0.99


# ----------------------------------------------------------------------------- compare, JSON

def test_compare_counts_and_keys():
    candidate = [3.0, 1.0, 2.0, 4.0, np.nan, 5.0]
    base = [1.0, 2.0, 2.0, 0.0, 1.0, np.nan]
    result = compare(candidate, base, clusters=["a", "a", "b", "b", "c", "c"])
    assert set(result) == {"win_rate", "wins", "losses", "ties", "sign_test_p", "mean_difference", "significant"}
    assert (result["wins"], result["losses"], result["ties"]) == (2, 1, 1)
    assert result["win_rate"] == {"estimate": 0.625, "low": 0.5, "high": 0.75, "n": 4}
    assert result["sign_test_p"] == pytest.approx(binomtest(1, 3, 0.5).pvalue)
    assert result["significant"] is False
    # differences 2, -1, 0, 4: prompt a sums 1, b 4; resamples aa 0.5, ab 1.25, bb 2.
    assert result["mean_difference"] == {"estimate": 1.25, "low": 0.5, "high": 2.0, "n": 4}
    json.dumps(result, allow_nan=False)


def test_compare_all_missing_is_json_safe():
    result = compare([np.nan, 1.0], [2.0, np.nan])
    assert result["win_rate"] == {"estimate": None, "low": None, "high": None, "n": 0}
    assert result["sign_test_p"] is None and result["significant"] is False
    assert json.loads(json.dumps(result, allow_nan=False)) == result


def test_interval_to_json_rounds_and_never_emits_nan():
    assert Interval(1 / 3, float("nan"), float("inf"), 5).to_json() == {"estimate": 0.333333, "low": None, "high": None, "n": 5}
    assert Interval(0.1234565, 0.0, 1.0, 2).contains(0.5)
    assert not Interval(0.5, 0.4, 0.6, 2).contains(0.7)
