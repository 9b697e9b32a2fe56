"""The whole build at scale, on model-free stand-ins: what the driver costs per stage as candidates grow.

Runs `pipeline.build.Build` (all seven stages: prompts, generate, score, pair, judge, select, write)
with the synthetic generator, scorer and rater backend of benchmarks/synthetic.py (pixels from each
candidate's seed, five pixel statistics as the reward models, saturation as the VLM's answer), on 5 image categories,
2 generators x 1 setting x 4 seeds per prompt, quorum 4 of 5 (min margin 0.1), quotas 10% of prompts, units of 32 x 32 = 1024
candidates, 2 actors of 1 CPU, `ray: {num_cpus: 2, columnar: auto}` (columnar stages move to Ray
tasks from 100K rows). Each size runs in a fresh process of this script (so peak RSS is its own), then a
no-op rerun of the finished folder in another fresh process. Per stage it prints:

  * the driver's wall time, its main thread's CPU time (`time.thread_time()`: vipo's own driver code,
    planning, dispatch, records, finalize) and its process CPU time (`time.process_time()`: every
    thread, Ray's and Ray Data's scheduling loops included, which tick for as long as a stage runs;
    less the RSS sampler's own), as opposed to waiting for Ray workers;
  * the driver's peak RSS during the stage (psutil, sampled every 10 ms in a background thread), and
    the summed RSS of the whole process tree (Ray's processes included; shared pages count once per
    process, so an upper bound);
  * the files under the build folder before/after the stage, media/ apart;

then the no-op rerun's per-stage times, the growth ratios of each stage's wall and CPU time and of the
peak RSS from size to size, the us per candidate at the largest size, and PASS/FAIL beside the goals:

  * driver peak RSS at the largest size within 1.3x of the smallest (10K -> 1M);
  * the no-op rerun of the largest build <= 60 s in all (Build.run(), Ray start included);
  * per stage, the driver's main-thread CPU time linear in candidates (<= 1.1x the size ratio: 11x per
    10x) and <= 20 us per candidate at the largest size (process CPU and wall time printed beside).

Build folders default to a folder on /dev/shm when it has room (tmpfs: the media writes' fsyncs, 2 per
file, would otherwise be most of the synthetic generator's time on a slow disk; --work moves them).

    python benchmarks/build_scale.py                                  # 10K, 100K, 1M
    python benchmarks/build_scale.py --quick                          # 2K, 20K (a minute or two)
    python benchmarks/build_scale.py --sizes 10000,100000 --work /data/tmp --json results.json
    python benchmarks/build_scale.py --one 100000 --work DIR --json r.json [--rerun]   # one size, here

Build folders go under --work (default: a temp dir) and are deleted after each size (--keep keeps them).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GOAL_RSS_GROWTH = 1.3
GOAL_RERUN_S = 60.0
GOAL_LINEAR = 1.1  # a stage's time may grow at most 1.1x the candidates' growth (11x per 10x)
GOAL_US_PER_CANDIDATE = 20.0
STAGE_NAMES = ("prompts", "generate", "score", "pair", "judge", "select", "write")


# -- measuring, in the child process ----------------------------------------------------------------
class RssSampler(threading.Thread):
    """Samples this process's RSS every `period` s (and the whole process tree's every `tree_period`)."""

    def __init__(self, period: float = 0.01, tree_period: float = 2.0):
        super().__init__(daemon=True)
        import psutil

        self.proc = psutil.Process()
        self.period, self.tree_period = period, tree_period
        self.peak = self.tree_peak = 0
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._cpu = 0.0

    def tree_rss(self) -> int:
        total = 0
        try:
            procs = [self.proc, *self.proc.children(recursive=True)]
        except Exception:
            return 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except Exception:
                pass
        return total

    def run(self) -> None:
        last_tree = 0.0
        while not self._halt.is_set():
            rss = self.proc.memory_info().rss
            now = time.monotonic()
            tree = self.tree_rss() if now - last_tree >= self.tree_period else 0
            last_tree = now if tree else last_tree
            with self._lock:
                self.peak = max(self.peak, rss)
                self.tree_peak = max(self.tree_peak, tree)
                self._cpu = time.thread_time()
            self._halt.wait(self.period)

    def cpu(self) -> float:
        """CPU seconds this sampler thread has used (subtracted from the driver's CPU time)."""
        with self._lock:
            return self._cpu

    def window(self) -> None:
        """Start a new measuring window (the peaks restart from the current values)."""
        with self._lock:
            self.peak = self.proc.memory_info().rss
            self.tree_peak = 0

    def peaks(self) -> tuple[int, int]:
        with self._lock:
            return max(self.peak, self.proc.memory_info().rss), self.tree_peak

    def stop(self) -> None:
        self._halt.set()


def count_files(root: Path) -> dict[str, int]:
    """Files under the build folder, by top-level entry (media/ is one of them); scandir, no stat calls."""
    out: dict[str, int] = {}
    if not root.exists():
        return out

    def walk(path: str) -> int:
        n = 0
        with os.scandir(path) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    n += walk(e.path)
                else:
                    n += 1
        return n

    with os.scandir(root) as it:
        for e in it:
            out[e.name] = walk(e.path) if e.is_dir(follow_symlinks=False) else 1
    return out


def _split(counts: dict[str, int]) -> tuple[int, int]:
    media = counts.get("media", 0)
    return sum(counts.values()) - media, media


def run_one(size: int, work: Path, rerun: bool, json_out: Path | None) -> dict:
    """One build (or its no-op rerun) of `size` candidates in this process, measured stage by stage."""
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    import psutil

    from benchmarks.reporters import ProgressReporter
    from benchmarks.synthetic import SyntheticBuild, synthetic_config
    from schemas.config import parse_config

    out_dir = work / f"build-{size}"
    if rerun and not out_dir.exists():
        raise SystemExit(f"--rerun: no build folder {out_dir}")
    cfg = parse_config(synthetic_config(size, str(out_dir)), f"<synthetic {size}>")
    n_candidates = sum(q.prompts for q in cfg.categories.values()) * sum(
        g.seeds_per_prompt * len(g.sampling) for g in cfg.generators)
    result: dict = {"size": size, "candidates": n_candidates, "rerun": rerun, "stages": {}, "complete": False}

    def save() -> None:
        if json_out is not None:
            json_out.write_text(json.dumps(result, indent=2))

    sampler = RssSampler()
    sampler.start()
    build = SyntheticBuild(cfg, reporter=ProgressReporter())
    first_step: dict = {}

    def measured(step: str, method):
        def wrapper(res):
            before = count_files(out_dir)
            first_step.setdefault("t", time.perf_counter())
            sampler.window()
            rss0 = sampler.proc.memory_info().rss
            c0, t0, s0, m0 = time.process_time(), time.perf_counter(), sampler.cpu(), time.thread_time()
            summary = method(res)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0 - (sampler.cpu() - s0)
            main = time.thread_time() - m0
            peak, tree = sampler.peaks()
            after = count_files(out_dir)
            (f0, m0), (f1, m1) = _split(before), _split(after)
            result["stages"][step] = {
                "wall_s": wall, "cpu_s": cpu, "main_cpu_s": main, "rss_start": rss0, "rss_peak": peak, "tree_rss_peak": tree,
                "files_before": f0, "files_after": f1, "media_before": m0, "media_after": m1,
                "files_by_folder": after, "load_avg_1m": os.getloadavg()[0], "n_in": summary.n_in, "n_out": summary.n_out, "units": summary.units,
                "units_run": summary.units_run, "note": summary.note, "line": summary.line(),
            }
            save()
            return summary
        return wrapper

    for step in STAGE_NAMES:
        setattr(build, f"_{step}", measured(step, getattr(build, f"_{step}")))

    c0, t0, s0, m0 = time.process_time(), time.perf_counter(), sampler.cpu(), time.thread_time()
    build.run()
    total_wall, total_cpu = time.perf_counter() - t0, time.process_time() - c0 - (sampler.cpu() - s0)
    total_main = time.thread_time() - m0
    stage_wall = sum(s["wall_s"] for s in result["stages"].values())
    sampler.stop()
    result.update(
        complete=True, run_wall_s=total_wall, run_cpu_s=total_cpu, run_main_cpu_s=total_main, sampler_cpu_s=sampler.cpu(),
        startup_s=first_step.get("t", t0) - t0,  # preflight, config.yaml, Ray start
        other_s=total_wall - stage_wall,
        peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # KiB on Linux
        process_s=time.time() - psutil.Process().create_time(),
    )
    save()
    import ray

    ray.shutdown()
    return result


# -- the driver of the benchmark ---------------------------------------------------------------------
def _child(size: int, work: Path, rerun: bool) -> dict:
    fd, path = tempfile.mkstemp(prefix=f"build-scale-{size}-", suffix=".json")
    os.close(fd)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", str(size), "--work", str(work), "--json", path]
    if rerun:
        cmd.append("--rerun")
    # A private Ray temp dir: `ray.init()` without an address joins any cluster another user `ray start`ed
    # (it reads /tmp/ray/ray_current_cluster), which would both fail (num_cpus given) and share the CPUs.
    ray_tmp = tempfile.mkdtemp(prefix="vipo-ray-", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, stdout=sys.stderr, check=False, env=env)  # progress lines go to our stderr
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    wall = time.perf_counter() - t0
    try:
        result = json.loads(Path(path).read_text() or "{}")
    finally:
        os.unlink(path)
    result.setdefault("size", size)
    result.setdefault("stages", {})
    result["child_wall_s"], result["returncode"] = wall, proc.returncode
    return result


def _mib(b: float) -> str:
    return f"{b / 2**20:,.0f}"


def _table(header: list[str], rows: list[list], align: str | None = None) -> str:
    cells = [header, *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    align = align or "l" + "r" * (len(header) - 1)
    fmt = lambda r: "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align))
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, rows)])


def _headline(label: str, process_label: str, r: dict) -> str:
    """One run's totals: wall (Ray's start apart), driver CPU, peak RSS, the whole process's time."""
    nan = float("nan")
    status = "" if r.get("complete") else f"  INCOMPLETE (exit {r.get('returncode')})"
    return (f"{label} {r.get('run_wall_s', nan):.1f} s (startup incl. Ray {r.get('startup_s', nan):.1f} s), driver CPU "
            f"{r.get('run_cpu_s', nan):.1f} s, peak RSS {_mib(r.get('peak_rss', 0))} MiB, "
            f"{process_label} {r.get('process_s', nan):.1f} s{status}")


def print_size(build: dict, rerun: dict) -> None:
    n = build.get("candidates", build["size"])
    print(_headline(f"\n== {n:,} candidates: build", "process", build))
    rows = []
    for step in STAGE_NAMES:
        s = build["stages"].get(step)
        if s is None:
            rows.append([step, *["-"] * 14])
            continue
        rows.append([
            step, f"{s['wall_s']:.2f}", f"{s['main_cpu_s']:.2f}", f"{s['cpu_s']:.2f}", f"{s['cpu_s'] / max(s['wall_s'], 1e-9):.0%}",
            f"{s['wall_s'] / n * 1e6:.1f}", f"{s['main_cpu_s'] / n * 1e6:.1f}", f"{s['cpu_s'] / n * 1e6:.1f}",
            _mib(s["rss_peak"]), _mib(s["tree_rss_peak"]) if s["tree_rss_peak"] else "-",
            f"{s['files_after'] - s['files_before']:+,}", f"{s['files_after']:,}",
            f"{s['media_after'] - s['media_before']:+,}", f"{s['units_run']}/{s['units']}", f"{s.get('load_avg_1m', 0):.1f}",
        ])
    print(_table(["stage", "wall s", "main CPU s", "CPU s", "CPU/wall", "wall us/c", "main us/c", "CPU us/c", "RSS MiB", "tree MiB",
                  "files +/-", "files", "media +/-", "units run", "load"], rows))
    for step in STAGE_NAMES:
        s = build["stages"].get(step)
        if s:
            print(f"   {s['line']}")
    if not rerun:
        return
    print(_headline("-- no-op rerun: Build.run()", "whole process", rerun))
    rows = []
    for step in STAGE_NAMES:
        s = rerun["stages"].get(step)
        if s is None:
            rows.append([step, "-", "-", "-", "-", "-"])
            continue
        rows.append([step, f"{s['wall_s']:.2f}", f"{s['cpu_s']:.2f}", _mib(s["rss_peak"]),
                     f"{s['files_after'] - s['files_before']:+,}", f"{s['units_run']}/{s['units']}"])
    print(_table(["stage", "wall s", "CPU s", "RSS MiB", "files +/-", "units run"], rows))


def _ratio(a: float, b: float) -> float:
    return b / a if a > 0 else float("inf")


def summarise(results: list[tuple[dict, dict]]) -> dict:
    """Growth ratios, us per candidate at the largest size, and the goals (PASS/FAIL)."""
    done = [(b, r) for b, r in results if b.get("complete")]
    goals: dict[str, dict] = {}
    if not done:
        print("\nno complete size: nothing to summarise")
        return goals
    sizes = [b["candidates"] for b, _ in done]
    steps = list(zip(done, done[1:]))
    label = lambda a, b: f"{a['candidates'] // 1000:,}K->{b['candidates'] // 1000:,}K"
    growth = ", ".join(f"x{_ratio(a['candidates'], b['candidates']):.0f}" for (a, _), (b, _) in steps) or "-"
    print(f"\n== growth from size to size (candidates {growth}); "
          f"goal: the driver's main-thread CPU (vipo's code) growing <= {GOAL_LINEAR:g}x the size growth, "
          f"<= {GOAL_US_PER_CANDIDATE:g} us/candidate at {sizes[-1]:,}; process CPU (Ray's driver threads too) beside")
    big = done[-1][0]
    n_big = big["candidates"]
    rows = []
    for step in STAGE_NAMES:
        row = [step]
        cpu_ok = True
        for key in ("wall_s", "main_cpu_s", "cpu_s"):
            for (a, _), (b, _) in steps:
                sa, sb = a["stages"].get(step), b["stages"].get(step)
                if not sa or not sb:
                    row.append("-")
                    continue
                g = _ratio(sa[key], sb[key])
                limit = GOAL_LINEAR * _ratio(a["candidates"], b["candidates"])
                if key == "main_cpu_s" and g > limit:
                    cpu_ok = False
                row.append(f"{g:.1f}x")
        s = big["stages"].get(step)
        us_cpu = s["main_cpu_s"] / n_big * 1e6 if s else float("nan")
        us_proc = s["cpu_s"] / n_big * 1e6 if s else float("nan")
        us_wall = s["wall_s"] / n_big * 1e6 if s else float("nan")
        us_ok = us_cpu <= GOAL_US_PER_CANDIDATE
        ok = (cpu_ok or not steps) and us_ok
        goals[f"stage {step}"] = {"pass": ok, "linear": cpu_ok, "us_cpu": us_cpu, "us_proc": us_proc, "us_wall": us_wall}
        row += [f"{us_cpu:.1f}", f"{us_proc:.1f}", f"{us_wall:.1f}", ("PASS" if ok else "FAIL") + ("" if cpu_ok else " (growth)") + ("" if us_ok else " (us/c)")]
        rows.append(row)
    total = ["all stages"]
    for key in ("run_wall_s", "run_main_cpu_s", "run_cpu_s"):
        for (a, _), (b, _) in steps:
            total.append(f"{_ratio(a[key], b[key]):.1f}x")
    total += [f"{big['run_main_cpu_s'] / n_big * 1e6:.1f}", f"{big['run_cpu_s'] / n_big * 1e6:.1f}",
              f"{big['run_wall_s'] / n_big * 1e6:.1f}", ""]
    rows.append(total)
    rss = ["peak RSS"]
    for (a, _), (b, _) in steps:
        rss.append(f"{_ratio(a['peak_rss'], b['peak_rss']):.2f}x")
    rss += [""] * (2 * len(steps) + 4)
    rows.append(rss)
    header = ["stage", *[f"wall {label(a, b)}" for (a, _), (b, _) in steps], *[f"main {label(a, b)}" for (a, _), (b, _) in steps],
              *[f"CPU {label(a, b)}" for (a, _), (b, _) in steps],
              f"main us/c @{n_big // 1000:,}K", f"CPU us/c @{n_big // 1000:,}K", f"wall us/c @{n_big // 1000:,}K", "goal"]
    print(_table(header, rows))

    small = done[0][0]
    rss_growth = _ratio(small["peak_rss"], big["peak_rss"])
    goals["driver peak RSS"] = {"pass": rss_growth <= GOAL_RSS_GROWTH, "value": rss_growth}
    rerun = done[-1][1]
    rerun_s = rerun.get("run_wall_s", float("inf")) if rerun and rerun.get("complete") else float("inf")
    goals["no-op rerun"] = {"pass": rerun_s <= GOAL_RERUN_S, "value": rerun_s}
    print("\n== goals")
    print(f"  {'PASS' if goals['driver peak RSS']['pass'] else 'FAIL'}  driver peak RSS at {n_big:,} is {rss_growth:.2f}x "
          f"the {small['candidates']:,} build's ({_mib(big['peak_rss'])} vs {_mib(small['peak_rss'])} MiB; goal <= {GOAL_RSS_GROWTH:g}x)")
    print(f"  {'PASS' if goals['no-op rerun']['pass'] else 'FAIL'}  no-op rerun of the {n_big:,} build: Build.run() "
          f"{rerun_s:.1f} s (whole process {rerun.get('process_s', float('nan')) if rerun else float('nan'):.1f} s; goal <= {GOAL_RERUN_S:g} s)")
    for step in STAGE_NAMES:
        g = goals[f"stage {step}"]
        print(f"  {'PASS' if g['pass'] else 'FAIL'}  {step:<8} driver main-thread CPU {'linear' if g['linear'] else 'SUPER-LINEAR'}, "
              f"{g['us_cpu']:.1f} us/candidate (process CPU {g['us_proc']:.1f}, wall {g['us_wall']:.1f}) at {n_big:,} "
              f"(goal <= {GOAL_US_PER_CANDIDATE:g})")
    return goals


def _default_work_root(candidates: int) -> str | None:
    """/dev/shm when it holds the largest build with room to spare (~3 KB a candidate), else the temp dir."""
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > 4 * 3000 * candidates:
        return str(shm)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated candidate counts")
    ap.add_argument("--quick", action="store_true", help="a tiny run: 2K and 20K candidates")
    ap.add_argument("--work", type=Path, help="folder for the build folders (default: a temp dir)")
    ap.add_argument("--json", type=Path, help="save the results here")
    ap.add_argument("--keep", action="store_true", help="keep each size's build folder")
    ap.add_argument("--no-rerun", action="store_true", help="skip the no-op reruns")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # one size in this process (the children)
    ap.add_argument("--rerun", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.one:
        work = args.work or Path(tempfile.mkdtemp(prefix="vipo-build-scale-"))
        run_one(args.one, work, args.rerun, args.json)
        return

    sizes = [2000, 20000] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    own_work = args.work is None
    work = args.work or Path(tempfile.mkdtemp(prefix="vipo-build-scale-", dir=_default_work_root(max(sizes))))
    work.mkdir(parents=True, exist_ok=True)
    print(f"build_scale: sizes {', '.join(f'{s:,}' for s in sizes)}; build folders under {work}", flush=True)
    print(f"  disk: {shutil.disk_usage(work).free / 2**30:.0f} GiB free; cores: {os.cpu_count()}", flush=True)
    results: list[tuple[dict, dict]] = []
    try:
        for size in sizes:
            build = _child(size, work, rerun=False)
            rerun = _child(size, work, rerun=True) if build.get("complete") and not args.no_rerun else {}
            results.append((build, rerun))
            print_size(build, rerun)
            sys.stdout.flush()
            if args.json:
                args.json.write_text(json.dumps({"sizes": sizes, "results": results}, indent=2))
            if not args.keep:
                shutil.rmtree(work / f"build-{size}", ignore_errors=True)
            if not build.get("complete"):
                break
        goals = summarise(results)
        if args.json:
            args.json.write_text(json.dumps({"sizes": sizes, "results": results, "goals": goals}, indent=2))
    finally:
        if own_work and not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
