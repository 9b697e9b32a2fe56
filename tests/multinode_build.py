"""One multi-node build scenario, run in its own process by tests/test_multinode.py.

A process can join one Ray cluster only, and the test session already has its local instance, so
each scenario runs here:

    python tests/multinode_build.py --config cfg.yaml --result result.json [--workers 2] [--kill generate|score]

It starts a `ray.cluster_utils.Cluster` (a 1-CPU head and `--workers` 1-CPU worker nodes, all on
this machine), points the config's `ray.address` at it and runs `Build(cfg).run()`. The model stages
are the pipeline's own, wrapped by a tracing mixin that only records events (which node set up an
actor, started and ended which unit) as one small JSON file each under `<result>.trace/`.

`--kill STAGE`: a watcher thread removes a worker node (SIGKILL, no graceful shutdown) in the middle
of that stage. To land the kill deterministically, the traced stage holds each unit that starts
after the stage's first unit file exists (`<table>/_units/*.parquet`) until the kill is done: the
watcher waits for the first unit file and for a unit held on a worker node, removes that node, then
releases the others. Held units only wait; what they compute is unchanged.

`--rerun`: if the build fails, run it once more on the surviving nodes (a resume by identity).

The result JSON holds the nodes, the kill, the trace events, each attempt's stage summaries or
error, the sha256 of every file under `shards/`, and timings.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import ClassVar

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.build import Build  # noqa: E402
from pipeline.generate import GenerateStage  # noqa: E402
from pipeline.score import ScoreStage  # noqa: E402
from schemas.config import parse_config  # noqa: E402
from schemas.units import Unit  # noqa: E402

HOLD_TIMEOUT_S = 240  # a held unit goes on by itself after this (the watcher should release it long before)
FALLBACK_S = 45  # kill a worker with an actor of the stage if no unit is held on a worker this long after the first file


def _event(trace_dir: str, **data) -> None:
    """One trace event, as its own small file (written by the actors, read by the driver's watcher)."""
    import ray

    ctx = ray.get_runtime_context()
    data.update(t=time.time(), pid=os.getpid(), node=ctx.get_node_id(), actor=ctx.get_actor_id())
    folder = Path(trace_dir)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns()}-{os.getpid()}-{secrets.token_hex(3)}"
    tmp = folder / f".{name}.tmp"
    tmp.write_text(json.dumps(data))
    os.replace(tmp, folder / f"{name}.json")


def read_events(trace_dir: str | Path) -> list[dict]:
    folder = Path(trace_dir)
    if not folder.exists():
        return []
    out = []
    for p in sorted(folder.glob("*.json")):
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, ValueError):  # pragma: no cover - files land by rename
            continue
    return sorted(out, key=lambda e: e["t"])


class _Traced:
    """Records setup and each unit's start and end; holds units while a kill is armed (see module doc).

    Class attributes, not dataclass fields: the executor pickles the stage class by value (it is
    defined in __main__), these ride along, and the stage's constructor is the pipeline's own.
    """

    trace_dir: ClassVar[str] = ""
    hold_units: ClassVar[str] = ""  # the `_units` folder whose first file arms the hold; "" never holds
    release_file: ClassVar[str] = ""

    @property
    def pool(self) -> str:
        """Which actor pool: the generator, or the score group's models."""
        return self.gcfg.name if getattr(self, "gcfg", None) else "+".join(m[0] for m in getattr(self, "models", []))

    def setup(self) -> None:
        _event(self.trace_dir, event="setup", stage=self.name, pool=self.pool)
        super().setup()
        _event(self.trace_dir, event="ready", stage=self.name, pool=self.pool)

    def process(self, unit):
        if not isinstance(unit, Unit):
            return super().process(unit)
        _event(self.trace_dir, event="start", stage=self.name, pool=self.pool, unit=unit.id)
        self._hold(unit)
        out = super().process(unit)
        _event(self.trace_dir, event="end", stage=self.name, pool=self.pool, unit=unit.id)
        return out

    def _hold(self, unit: Unit) -> None:
        if not self.hold_units or Path(self.release_file).exists():
            return
        units = Path(self.hold_units)
        if not (units.exists() and any(units.glob("*.parquet"))):
            return
        _event(self.trace_dir, event="hold", stage=self.name, pool=self.pool, unit=unit.id)
        deadline = time.time() + HOLD_TIMEOUT_S
        while not Path(self.release_file).exists() and time.time() < deadline:
            time.sleep(0.1)
        _event(self.trace_dir, event="release", stage=self.name, pool=self.pool, unit=unit.id)


class TracedGenerate(_Traced, GenerateStage):
    pass


class TracedScore(_Traced, ScoreStage):
    pass


class TracedBuild(Build):
    generate_stage = TracedGenerate
    score_stage = TracedScore


def shard_hashes(out: Path) -> dict[str, str]:
    root = out / "shards"
    if not root.exists():
        return {}
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _summaries(result) -> list[dict]:
    return [
        {"stage": s.stage, "units": s.units, "units_run": s.units_run, "n_in": s.n_in, "n_out": s.n_out,
         "now": s.now, "before": s.before, "note": s.note, "seconds": round(s.seconds, 2)}
        for s in result.summaries
    ]


class Watcher(threading.Thread):
    """Removes a worker node once `units` has a file and a unit of `stage` is held on a worker node."""

    def __init__(self, cluster, stage: str, units: Path, trace_dir: Path, release: Path):
        super().__init__(daemon=True)
        self.cluster, self.stage, self.units, self.trace_dir, self.release = cluster, stage, units, trace_dir, release
        self.info: dict = {"stage": stage, "done": False}

    def run(self) -> None:
        try:
            self._run()
        except Exception:  # pragma: no cover - reported in the result
            self.info["error"] = traceback.format_exc()
        finally:
            self.release.parent.mkdir(parents=True, exist_ok=True)
            self.release.write_text("released")

    def _run(self) -> None:
        workers = {n.node_id: n for n in self.cluster.worker_nodes}  # the driver is on the head (ray.init prefers it)
        first_file_at, victim, how = None, None, None
        while victim is None:
            time.sleep(0.1)
            files = sorted(p.stem for p in self.units.glob("*.parquet")) if self.units.exists() else []
            if not files:
                continue
            first_file_at = first_file_at or time.time()
            events = [e for e in read_events(self.trace_dir) if e["stage"] == self.stage]
            held = [e for e in events if e["event"] == "hold" and e["node"] in workers]
            if held:
                victim, how = held[0]["node"], "held unit"
            elif time.time() - first_file_at > FALLBACK_S:
                with_actor = [e["node"] for e in events if e["event"] == "setup" and e["node"] in workers]
                victim, how = (with_actor or sorted(workers))[0], "fallback"
        events = [e for e in read_events(self.trace_dir) if e["stage"] == self.stage]
        started = {e["unit"] for e in events if e["event"] == "start" and e["node"] == victim}
        ended = {e["unit"] for e in events if e["event"] == "end" and e["node"] == victim}
        files = sorted(p.stem for p in self.units.glob("*.parquet"))
        t0 = time.time()
        killed = kill_node(self.cluster, workers[victim])
        self.info.update(
            done=True, node=victim, how=how, t=t0, remove_s=round(time.time() - t0, 2), killed_pids=killed,
            unit_files_at_kill=files, in_flight_on_victim=sorted(started - ended),
        )


def kill_node(cluster, node) -> list[int]:
    """Lose `node` at once: SIGKILL the processes its raylet started (the actors' workers among them),
    then remove the node. `remove_node` alone kills the raylet and its services, and a worker would
    run on for a moment after, still writing to the shared disk, which a lost machine does not do."""
    import psutil
    from ray._private import ray_constants

    raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process
    children = psutil.Process(raylet.pid).children(recursive=True)
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    cluster.remove_node(node, allow_graceful=False)
    psutil.wait_procs(children, timeout=10)
    return sorted(c.pid for c in children)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--result", required=True)
    ap.add_argument("--workers", type=int, default=2, help="1-CPU worker nodes besides the 1-CPU head")
    ap.add_argument("--kill", choices=["none", "generate", "score"], default="none")
    ap.add_argument("--rerun", action="store_true", help="if the build fails, run it again on the surviving nodes")
    ap.add_argument("--deadline", type=float, default=900, help="seconds before the scenario gives up (cluster shut down)")
    args = ap.parse_args(argv)

    import ray
    import ray.data
    import yaml
    from ray.cluster_utils import Cluster

    t_start = time.time()
    result_path = Path(args.result)
    trace_dir = Path(str(result_path) + ".trace")
    release = trace_dir / "_released" / "release"
    report: dict = {"ok": False, "attempts": [], "kill": None}

    def dump() -> None:
        report["events"] = read_events(trace_dir)
        report["seconds"] = round(time.time() - t_start, 1)
        tmp = result_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1, default=str))
        os.replace(tmp, result_path)

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "include_dashboard": False,
            # find a removed node in ~5 s rather than ~15 s (the defaults: 3 s period, 5 failures)
            "_system_config": {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 1000,
                               "health_check_failure_threshold": 5},
        },
    )

    def give_up() -> None:
        report["error"] = f"scenario deadline of {args.deadline:g} s passed"
        dump()
        try:
            cluster.shutdown()
        finally:
            os._exit(3)

    timer = threading.Timer(args.deadline, give_up)
    timer.daemon = True
    timer.start()
    try:
        for _ in range(args.workers):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        report["nodes"] = {"head": cluster.head_node.node_id, "workers": sorted(n.node_id for n in cluster.worker_nodes)}
        report["cluster_start_s"] = round(time.time() - t_start, 1)

        data = yaml.safe_load(Path(args.config).read_text())
        data.setdefault("ray", {})
        data["ray"]["address"] = cluster.address  # the build joins the cluster through its config
        cfg = parse_config(data)
        out = Path(cfg.output_dir)

        # each pool starts its units once all its actors are up (Ray Data's default starts them as the
        # first actor is ready, which may then take every unit): units spread over the pool's nodes
        ray.data.DataContext.get_current().wait_for_min_actors_s = int(args.deadline)
        TracedGenerate.trace_dir = TracedScore.trace_dir = str(trace_dir)
        TracedGenerate.release_file = TracedScore.release_file = str(release)
        watcher = None
        if args.kill != "none":
            units = out / ("candidates" if args.kill == "generate" else "scores_raw/group-0") / "_units"
            (TracedGenerate if args.kill == "generate" else TracedScore).hold_units = str(units)
            watcher = Watcher(cluster, args.kill, units, trace_dir, release)
            watcher.start()

        for attempt in range(2 if args.rerun else 1):
            t0 = time.time()
            entry: dict = {"attempt": attempt}
            report["attempts"].append(entry)
            try:
                res = TracedBuild(cfg).run()
                entry.update(ok=True, summaries=_summaries(res))
            except Exception as err:  # the node loss may fail the build: reported, then maybe rerun
                entry.update(ok=False, error_type=type(err).__name__, error=str(err)[:4000],
                             traceback=traceback.format_exc()[-6000:])
            entry["seconds"] = round(time.time() - t0, 1)
            if watcher is not None:
                watcher.join(timeout=0 if entry["ok"] else 60)
                report["kill"] = watcher.info
                release.parent.mkdir(parents=True, exist_ok=True)
                release.write_text("released")  # a rerun never holds
            if ray.is_initialized():
                entry["alive_nodes"] = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
            dump()
            if entry["ok"]:
                break
        report["ok"] = report["attempts"][-1]["ok"]
        report["shards"] = shard_hashes(out)
    except Exception:
        report["error"] = traceback.format_exc()
    finally:
        timer.cancel()
        dump()
        ray.shutdown()
        cluster.shutdown()
        dump()
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
