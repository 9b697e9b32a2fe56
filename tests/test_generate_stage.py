"""The generate stage's own logic, with the diffusers call replaced by failure injection: retry one by
one, record failures with their reason (and count them in the stage's stats, which a unit's done marker
keeps), reject small candidates without upscaling, refuse GPU asks."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from pipeline.generate import BELOW_MIN_RESOLUTION, GenerateStage
from pipeline.generators import REGISTRY
from pipeline.ray_runtime import ResourceError, check_resources
from schemas.config import MediaConfig, ResourceConfig


@dataclass
class FlakyStage(GenerateStage):
    """Batches fail (as under memory pressure); prompts containing 'nan' fail alone too."""

    calls: list | None = None

    def setup(self) -> None:
        self.calls = []

    def _render(self, tasks):
        self.calls.append(len(tasks))
        if len(tasks) > 1:
            raise RuntimeError("CUDA out of memory")
        if "nan" in tasks[0]["prompt"]:
            raise FloatingPointError("generator produced NaN pixels")
        return [np.full((64, 64, 3), 7 * len(self.calls), np.uint8)]


def _tasks(prompts):
    return [
        {"id": f"{i:016x}", "prompt_id": "p", "category": "aesthetics", "modality": "image", "prompt": p,
         "generator": "tiny-sd15", "seed": i, "params": "{}"}
        for i, p in enumerate(prompts)
    ]


def _stage(tmp_path, **media):
    stage = FlakyStage(resources=ResourceConfig(), spec=REGISTRY["tiny-sd15"], media_root=str(tmp_path), media=MediaConfig(**media))
    stage.setup()
    return stage


def test_failed_batch_retries_one_by_one_and_records_failures(tmp_path):
    stage = _stage(tmp_path)
    rows = stage.process(_tasks(["a fox", "a nan fox", "a cat"])).to_pylist()
    assert stage.calls == [3, 1, 1, 1]
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    assert rows[1]["reason"] == "FloatingPointError: generator produced NaN pixels"
    assert rows[1]["media_path"] is None
    for r in (rows[0], rows[2]):
        assert (tmp_path / r["media_path"]).is_file() and r["width"] == 64 and r["num_frames"] == 1
    # the stage's counters: one failure, with its reason, and an example naming the item
    assert stage.stats.failed == {"failed": 1} and stage.stats.dropped == {}
    assert (stage.stats.n_in, stage.stats.n_out) == (3, 2)
    assert stage.stats.examples == [f"{rows[1]['candidate_id']}: failed: FloatingPointError: generator produced NaN pixels"]


def test_small_candidates_are_rejected_not_upscaled(tmp_path):
    stage = _stage(tmp_path, min_image_side=128)
    (row,) = stage.process(_tasks(["a fox"])).to_pylist()
    assert row["status"] == "failed" and row["reason"].startswith(f"{BELOW_MIN_RESOLUTION}: 64x64")
    assert row["width"] == 64 and row["media_path"] is None
    assert not (tmp_path / "image").exists()
    assert stage.stats.dropped == {BELOW_MIN_RESOLUTION: 1} and stage.stats.failed == {}  # a rule, not a failure


def test_gpu_request_on_cpu_cluster_is_refused(ray_session):
    with pytest.raises(ResourceError, match=r"stage 'generate' asks for 1 GPU per actor but the Ray cluster has 0"):
        check_resources("generate", 1, 1)
    check_resources("generate", 0, 1)


@pytest.mark.parametrize("scheme", ["", "file://", "memory://"])
def test_media_store_roundtrip_local_and_fsspec(tmp_path, scheme):
    from pipeline.media import MediaStore

    root = f"{scheme}{tmp_path}/media" if scheme != "memory://" else "memory://vipo-test/media"
    store = MediaStore(root)
    assert store.remote == bool(scheme)
    store.write("image/ab/abcd.jpg", b"\xff\xd8bytes")
    assert store.read("image/ab/abcd.jpg") == b"\xff\xd8bytes"
    if scheme != "memory://":
        assert (tmp_path / "media" / "image" / "ab" / "abcd.jpg").read_bytes() == b"\xff\xd8bytes"
    with pytest.raises(FileNotFoundError):
        store.read("image/ab/missing.jpg")


def test_generate_stage_writes_media_through_fsspec(tmp_path):
    stage = FlakyStage(resources=ResourceConfig(), spec=REGISTRY["tiny-sd15"], media_root=f"file://{tmp_path}/remote", media=MediaConfig())
    stage.setup()
    (row,) = stage.process(_tasks(["a fox"])).to_pylist()
    assert row["media_path"] == f"image/{row['candidate_id'][:2]}/{row['candidate_id']}.jpg"
    assert (tmp_path / "remote" / row["media_path"]).is_file()


@dataclass
class FailsOne(GenerateStage):
    """Batches fail; the candidates in `bad` fail alone too."""

    bad: frozenset = frozenset()

    def setup(self) -> None:
        pass

    def _render(self, tasks):
        if len(tasks) > 1:
            raise RuntimeError("CUDA out of memory")
        if tasks[0]["id"] in self.bad:
            raise FloatingPointError("generator produced NaN pixels")
        return [np.full((64, 64, 3), 9, np.uint8)]


def test_a_units_failures_are_in_its_done_marker(tmp_path):
    """Through the unit path: planned from the prompts table, run by `run_unit`, the failure is a
    candidates row with status failed and counted in the stats the unit's file keeps."""
    from pipeline.catalogue import Table, read_slices
    from pipeline.executor import Executor
    from pipeline.generate import expand
    from pipeline.prompt_stage import PromptsStage
    from pipeline.stage import run_unit
    from schemas.config import GeneratorConfig
    from schemas.tables import CANDIDATES, PROMPTS

    prompts = Table(str(tmp_path / "prompts"), PROMPTS, cluster_by="category")
    Executor(use_ray=False).run(PromptsStage(counts={"aesthetics": 2}, seed=0, prompts=prompts, engine="local"))
    candidates = Table(str(tmp_path / "candidates"), CANDIDATES, cluster_by="category")
    gcfg = GeneratorConfig(name="tiny-sd15", seeds_per_prompt=2)
    stage = FailsOne(resources=ResourceConfig(batch_size=4), spec=REGISTRY["tiny-sd15"], gcfg=gcfg, model_path="x",
                     media_root=str(tmp_path / "media"), prompts=prompts, candidates=candidates, categories=("aesthetics",))
    [unit] = stage.plan()
    tasks = expand(read_slices(unit.slices), gcfg.name, unit.key, gcfg.seeds_per_prompt)
    assert unit.rows == len(tasks) == 4
    stage.bad = frozenset({tasks[2]["id"]})
    rec = run_unit(stage, unit)
    assert rec["id"] == unit.id and rec["rows"] == 4
    stored = candidates.records()[unit.id].unit_stats
    assert stored.failed == {"failed": 1} and (stored.n_in, stored.n_out) == (4, 3)
    rows = {r["candidate_id"]: r for r in candidates.read().to_pylist()}
    assert [rows[t["id"]]["status"] for t in tasks] == ["ok", "ok", "failed", "ok"]
    assert rows[tasks[2]["id"]]["reason"] == "FloatingPointError: generator produced NaN pixels"
