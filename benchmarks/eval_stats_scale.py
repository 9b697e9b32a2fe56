"""Cost of the eval statistics (`pipeline.eval.stats`) by number of paired scores.

Synthetic eval results shaped like `cli.py eval`: P pairs = P / 4 prompts x 4 seeds, base and
candidate reward scores sharing a per-prompt effect (so seeds of a prompt are correlated), 16-hex-digit
prompt ids as cluster labels (a numpy object array, as Arrow string columns convert). For 10K, 100K and 1M pairs, with 2000 resamples, it times

  * `compare()`: paired outcomes, counts, sign test and two cluster bootstraps (win rate, mean
    difference);
  * `bootstrap_mean()` of the candidate scores alone (one cluster bootstrap),

and prints wall and CPU seconds and the peak RSS growth of each (above the process holding the data),
then the growth ratios from one size to the next (linear cost: ~10 per step, since every resample draws
one index per prompt). Each call at each size runs in its own subprocess, so its peak RSS is its own.
On a shared machine the wall clock also measures the neighbours; CPU seconds do not.

    python benchmarks/eval_stats_scale.py            # 10K, 100K, 1M pairs
    python benchmarks/eval_stats_scale.py --quick    # 1K, 10K, 100K pairs, 500 resamples
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.eval.stats import Bootstrap, bootstrap_mean, compare

SEEDS = 4


def synthetic(pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(candidate, base, prompt ids): a per-prompt effect shared by both models, candidate + 0.05, ids shuffled."""
    rng = np.random.default_rng(seed)
    prompts = pairs // SEEDS
    prompt_effect = np.repeat(rng.normal(size=prompts), SEEDS)
    base = prompt_effect + rng.normal(scale=0.5, size=prompts * SEEDS)
    candidate = prompt_effect + 0.05 + rng.normal(scale=0.5, size=prompts * SEEDS)
    ids = np.repeat(np.array([f"{i:016x}" for i in rng.permutation(prompts)], dtype=object), SEEDS)
    return candidate, base, ids


def peak_rss_mb() -> float:
    """Peak RSS of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed(fn) -> dict:
    """Wall and CPU seconds of fn(), and how far it raised this process's peak RSS."""
    before = peak_rss_mb()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu, "rss": peak_rss_mb() - before}


CALLS = {
    "compare": lambda candidate, base, ids, boot: compare(candidate, base, ids, boot),
    "bootstrap_mean": lambda candidate, base, ids, boot: bootstrap_mean(candidate, ids, boot),
}


def measure(pairs: int, call: str, resamples: int) -> dict:
    """One call at one size, in this process: the data first (untimed), then the call."""
    candidate, base, ids = synthetic(pairs)
    boot = Bootstrap(resamples=resamples)
    return timed(lambda: CALLS[call](candidate, base, ids, boot))


def run_child(pairs: int, call: str, resamples: int) -> dict:
    """`measure` in a fresh interpreter, so the call's peak RSS growth is its own."""
    out = subprocess.run([sys.executable, __file__, "--child", str(pairs), call, "--resamples", str(resamples)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
    """Per size: seconds and RSS growth of both calls; then the ratios between consecutive sizes."""
    lines = [f"{'pairs':>10} {'prompts':>9} | {'compare s':>9} {'cpu s':>7} {'+RSS MB':>8} | "
             f"{'boot_mean s':>11} {'cpu s':>7} {'+RSS MB':>8}"]
    for r in results:
        c, b = r["compare"], r["bootstrap_mean"]
        lines.append(f"{r['pairs']:>10,} {r['prompts']:>9,} | {c['wall']:>9.2f} {c['cpu']:>7.2f} {c['rss']:>8.1f} | "
                     f"{b['wall']:>11.2f} {b['cpu']:>7.2f} {b['rss']:>8.1f}")
    lines.append("growth, ratio to the previous size (wall / cpu):")
    for prev, r in zip(results, results[1:]):
        ratios = {call: "/".join(f"x{r[call][t] / max(prev[call][t], 1e-9):.1f}" for t in ("wall", "cpu")) for call in CALLS}
        lines.append(f"  {prev['pairs']:>9,} -> {r['pairs']:>9,} (x{r['pairs'] / prev['pairs']:.0f}): "
                     f"compare {ratios['compare']}, bootstrap_mean {ratios['bootstrap_mean']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="numbers of pairs")
    parser.add_argument("--resamples", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="small sizes and 500 resamples (a smoke run)")
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    resamples = args.resamples or (500 if args.quick else 2000)
    if args.child is not None:
        print(json.dumps(measure(int(args.child[0]), args.child[1], resamples)))
        return
    sizes = args.sizes or ([1_000, 10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000])
    print(f"eval statistics, {SEEDS} seeds per prompt, {resamples} resamples, one process per size")
    results = []
    for pairs in sizes:
        results.append({"pairs": pairs, "prompts": pairs // SEEDS, **{call: run_child(pairs, call, resamples) for call in CALLS}})
        print(f"  {pairs:,} pairs: compare {results[-1]['compare']['wall']:.2f} s, "
              f"bootstrap_mean {results[-1]['bootstrap_mean']['wall']:.2f} s", flush=True)
    print(table(results))


if __name__ == "__main__":
    main()
