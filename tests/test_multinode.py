"""The build on a multi-node Ray cluster (`ray.cluster_utils.Cluster`: a 1-CPU head and two 1-CPU
worker nodes on this machine), and the loss of a worker node in the middle of a model stage.

This session already holds one local Ray instance (`ray_session`) and a process joins one cluster
only, so each scenario runs `tests/multinode_build.py` in a subprocess; it reports a JSON of trace
events (which node set up each actor, started and ended each unit), the node it killed and the
stage summaries. The one-node reference is built here, on `ray_session`, from the same config:
`small_config` with two 1-CPU actors per pool, so a pool's actors must sit on two nodes, and one
model call per unit (`batches_per_unit: 1`: 6 generate units, 4 score units), so a stage is still
running when its first unit file lands. Byte identity holds for the same unit grain only (a unit
fixes the model batches; a video score may differ in its last bits with another grain).

What Ray 2.60 does when a node is lost mid-stage (asserted below): Ray Data's actor pools run with
`max_restarts=-1, max_task_retries=-1` by default, so the lost actor is restarted on a surviving node
with a free CPU (the spare worker, or the head once the pool has let its idle actor go; its setup
starts 13-16 s after the kill here: the node's death is found by health checks, 1 s x 5 in the
script) and its in-flight and queued units are retried there. The build does not fail: one attempt,
no rerun needed, and every unit finished before the kill keeps its file and is not run again (its
small record was already with the driver, so nothing is rebuilt from lineage). The retried units
write the same bytes, so the shards are byte-identical to the one-node build.

Timings on this 2-core machine (shared with other work): cluster start 10-35 s, each actor's setup
10-30 s; the reference build 3.5-4 min, the plain cluster build 2.5-4 min, the generate node loss
3.5-5.5 min, the score node loss (from the reference's candidates) about 2.5 min: 12-16 min in all.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.build import Build
from pipeline.verify import verify_dataset
from schemas.config import parse_config
from tests.conftest import REPO, small_config, write_config

pytestmark = [pytest.mark.multinode, pytest.mark.timeout(1800)]  # the first test also builds the reference

SCRIPT = REPO / "tests" / "multinode_build.py"
SCENARIO_TIMEOUT_S = 720  # a subprocess past this is killed with its cluster (the script gives up 60 s before)
GEN_UNITS, SCORE_UNITS = 6, 4
GEN_POOLS, SCORE_POOL = ("tiny-sd15", "tiny-wan21"), "pickscore+hpsv21+imagereward+clipscore+aesthetic"


def _config(cache: Path, out: Path) -> dict:
    cfg = small_config(cache, out)
    for res in [g["resources"] for g in cfg["generators"]] + [cfg["scoring"]["resources"]]:
        res.update(num_actors=2, num_cpus=1, batches_per_unit=1)
    return cfg


def _shards(root: Path) -> dict[str, bytes]:
    """Every file under shards/: the tars, their parquet sidecars and the manifests."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "shards").rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(ray_session, vipo_cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("multinode") / "one-node"
    Build(parse_config(_config(vipo_cache, out))).run()
    assert _shards(out)
    return out


def _scenario(tmp_path: Path, cfg: dict, *args: str) -> dict:
    """Run tests/multinode_build.py on `cfg`; its JSON report (with the log's tail on failure)."""
    path = write_config(tmp_path / "cfg.yaml", cfg)
    result, log = tmp_path / "result.json", tmp_path / "scenario.log"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, str(SCRIPT), "--config", str(path), "--result", str(result),
           "--deadline", str(SCENARIO_TIMEOUT_S - 60), *args]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            proc.wait(SCENARIO_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the cluster's processes share its group (and fate)
            proc.wait()
    tail = log.read_text(errors="replace")[-4000:]
    assert result.exists(), f"the scenario wrote no result (rc {proc.returncode}):\n{tail}"
    report = json.loads(result.read_text())
    report["log_tail"] = tail
    report["rc"] = proc.returncode
    return report


def _events(report: dict, stage: str, event: str) -> list[dict]:
    return [e for e in report["events"] if e["stage"] == stage and e["event"] == event]


def _summary(report: dict, stage: str) -> dict:
    return next(s for s in report["attempts"][-1]["summaries"] if s["stage"] == stage)


def _why(report: dict) -> str:
    brief = {k: report.get(k) for k in ("error", "kill", "nodes", "seconds")}
    brief["attempts"] = [{k: a.get(k) for k in ("ok", "error_type", "error", "seconds")} for a in report["attempts"]]
    return json.dumps(brief, indent=1, default=str)[:6000] + "\n" + report["log_tail"][-2000:]


def test_cluster_build_spreads_actors_over_nodes_and_matches_one_node(reference, vipo_cache, tmp_path):
    """Every actor pool has its two actors on two different nodes, units run on more than one node,
    and the shards (tars, sidecars, manifests) are byte-identical to the one-node build's."""
    out = tmp_path / "cluster"
    report = _scenario(tmp_path, _config(vipo_cache, out))
    assert report["ok"] and len(report["attempts"]) == 1, _why(report)
    nodes = {report["nodes"]["head"], *report["nodes"]["workers"]}
    assert len(nodes) == 3
    for stage, pools in (("generate", GEN_POOLS), ("score", (SCORE_POOL,))):
        for pool in pools:
            actor_nodes = {e["node"] for e in _events(report, stage, "setup") if e["pool"] == pool}
            assert len(actor_nodes) == 2 and actor_nodes <= nodes, (pool, actor_nodes)
    ran = {e["node"] for e in report["events"] if e["event"] == "start"}
    assert len(ran) >= 2, ran
    starts = [e["unit"] for e in _events(report, "generate", "start")] + [e["unit"] for e in _events(report, "score", "start")]
    assert len(starts) == len(set(starts)) == GEN_UNITS + SCORE_UNITS  # each unit ran once
    assert _summary(report, "generate")["note"].startswith("(16 generated now, 0 already there)")
    assert _shards(out) == _shards(reference)
    assert verify_dataset(out) == []


def _check_node_loss(report: dict, stage: str, units: int) -> dict:
    """The kill landed mid-stage on a worker running a unit; Ray Data retried the lost units on the
    surviving nodes within the same build; units finished before the kill ran once."""
    kill = report["kill"]
    assert kill and kill["done"] and not kill.get("error"), _why(report)
    victim = kill["node"]
    assert victim in report["nodes"]["workers"] and kill["how"] == "held unit", kill
    done_before = set(kill["unit_files_at_kill"])
    assert 1 <= len(done_before) < units, kill  # after the stage's first unit file, before its end
    assert kill["in_flight_on_victim"], kill
    # Ray 2.60: no failure, no rerun: the lost actor was restarted elsewhere and its units retried
    assert report["ok"] and len(report["attempts"]) == 1 and report["attempts"][0]["ok"], _why(report)
    assert victim not in report["attempts"][0]["alive_nodes"]
    starts = _events(report, stage, "start")
    for uid in done_before:
        assert [e["unit"] for e in starts].count(uid) == 1, f"unit {uid}, finished before the kill, ran again"
    ends = _events(report, stage, "end")
    assert sorted({e["unit"] for e in ends}) == sorted({e["unit"] for e in starts}) and len({e["unit"] for e in ends}) == units
    for uid in kill["in_flight_on_victim"]:
        assert not [e for e in ends if e["unit"] == uid and e["node"] == victim], f"{uid} ended on the dead node"
        again = [e for e in starts if e["unit"] == uid and e["node"] != victim and e["t"] > kill["t"]]
        assert again, f"lost unit {uid} was not retried on a surviving node"
    assert not [e for e in report["events"] if e["node"] == victim and e["t"] > kill["t"] + 1.0]
    summary = _summary(report, stage)
    assert summary["units"] == units and summary["units_run"] == units, summary
    return kill


def test_worker_node_lost_mid_generate_is_retried_to_identical_shards(reference, vipo_cache, tmp_path):
    """A worker node SIGKILLed (raylet and its workers) while the first generator's pool is half done:
    Ray Data restarts the lost actor on the free node and retries its units; the build finishes in one
    go with all 6 generate units run, none of those finished before the kill run twice, and the
    shards are byte-identical to the one-node build's."""
    out = tmp_path / "killed"
    report = _scenario(tmp_path, _config(vipo_cache, out), "--kill", "generate", "--rerun")
    _check_node_loss(report, "generate", GEN_UNITS)
    assert _summary(report, "generate")["note"].startswith("(16 generated now, 0 already there)")
    assert _shards(out) == _shards(reference)
    assert verify_dataset(out) == []


def test_worker_node_lost_mid_score_is_retried_to_identical_shards(reference, vipo_cache, tmp_path):
    """The same in the middle of `score` (group-0's units), from the reference's prompts, candidates
    and media: generate is all there, score's lost units are retried on the surviving nodes."""
    out = tmp_path / "killed"
    shutil.copytree(reference, out, ignore=shutil.ignore_patterns(
        "scores", "scores_raw", "pairs", "selected", "dropped", "judgements", "shard_index", "shards", "card",
        "selection_report.json",
    ))
    report = _scenario(tmp_path, _config(vipo_cache, out), "--kill", "score", "--rerun")
    _check_node_loss(report, "score", SCORE_UNITS)
    assert _summary(report, "generate")["note"].startswith("(0 generated now, 16 already there)")
    assert _summary(report, "score")["note"].startswith("(16 scored now, 0 already there)")
    assert _shards(out) == _shards(reference)
    assert verify_dataset(out) == []
