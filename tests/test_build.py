"""The whole build on Ray with the tiny models: shards that verify and load with webdataset alone,
resume that skips finished work, and a SIGKILLed build that resumes to byte-identical shards."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.build import Build, StageInputError
from pipeline.verify import verify_dataset
from schemas.config import parse_config
from tests.conftest import REPO, small_config, tars, write_config


def test_build_verifies_and_fills_every_category(built):
    cfg, result = built
    assert verify_dataset(result.out_dir) == []
    counts = {}
    for man in result.manifests.values():
        counts.update(man["categories"])
    assert set(counts) == set(cfg.categories) and all(v >= 1 for v in counts.values())
    assert (result.out_dir / "card" / "README.md").read_text().startswith("---\n")
    summary = {s.stage: s for s in result.summaries}
    assert summary["generate"].n_out == 2 * 2 * 2 + 2 * 4  # image: 2 prompts x 2 settings x 2 seeds; video: 2 x 4
    assert summary["judge"].note.startswith("skipped")


def test_shards_load_with_webdataset_alone(built):
    import av
    import webdataset as wds

    _, result = built
    image_tars = sorted(str(p) for p in (result.out_dir / "shards" / "image").glob("*.tar"))
    samples = list(wds.WebDataset(image_tars, shardshuffle=False).decode("pil"))
    assert samples and all(s["win.jpg"].size == (64, 64) for s in samples)
    assert all(json.loads(s["json"])["pair_id"] == s["__key__"] if isinstance(s["json"], bytes) else s["json"]["pair_id"] == s["__key__"] for s in samples)
    video_tars = sorted(str(p) for p in (result.out_dir / "shards" / "video").glob("*.tar"))
    for s in wds.WebDataset(video_tars, shardshuffle=False):
        with av.open(io.BytesIO(s["win.mp4"])) as c:
            assert sum(1 for _ in c.decode(video=0)) == 9


def test_sidecars_match_selected(built):
    _, result = built
    selected = pq.read_table(result.out_dir / "selected").to_pandas()
    side_ids = []
    for p in sorted((result.out_dir / "shards").rglob("*.parquet")):
        side_ids += pq.read_table(p, columns=["pair_id"]).column(0).to_pylist()
    assert sorted(side_ids) == sorted(selected.pair_id)
    pairs = pq.read_table(result.out_dir / "pairs").to_pandas()
    assert set(selected.pair_id) <= set(pairs[pairs.kept].pair_id)
    assert pairs[~pairs.kept].drop_reason.notna().all()


def test_rerun_skips_finished_work(built):
    cfg, result = built
    before = {p: p.stat().st_mtime_ns for p in (result.out_dir / "candidates").glob("*.parquet")}
    before_tars = tars(result.out_dir)
    again = Build(cfg).run()
    gen = next(s for s in again.summaries if s.stage == "generate")
    assert "(0 generated now" in gen.note
    assert {p: p.stat().st_mtime_ns for p in (result.out_dir / "candidates").glob("*.parquet")} == before
    assert tars(result.out_dir) == before_tars


def test_stage_without_input_is_refused(ray_session, vipo_cache, tmp_path):
    cfg = parse_config(small_config(vipo_cache, tmp_path / "empty"))
    with pytest.raises(StageInputError, match="run the 'score' stage first"):
        Build(cfg).run(["pair"])


def test_verify_reports_tampering(built, tmp_path):
    _, result = built
    copy = tmp_path / "copy"
    shutil.copytree(result.out_dir / "shards", copy / "shards")
    tar = sorted((copy / "shards" / "image").glob("*.tar"))[0]
    data = bytearray(tar.read_bytes())
    data[1024:1040] = b"\x00" * 16  # inside the first members' payload
    tar.write_bytes(bytes(data))
    problems = verify_dataset(copy)
    assert any(tar.name in p and "sha256" in p for p in problems)
    proc = subprocess.run([sys.executable, str(REPO / "cli.py"), "verify", str(copy)], capture_output=True, text=True)
    assert proc.returncode == 1 and tar.name in proc.stdout


def test_sigkill_midway_then_resume_gives_identical_shards(built, ray_session, vipo_cache, tmp_path):
    _, reference = built
    out = tmp_path / "killed"
    cfg_dict = small_config(vipo_cache, out)
    path = write_config(tmp_path / "cfg.yaml", cfg_dict)
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "cli.py"), "build", "--config", str(path)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if len(list((out / "candidates").glob("_units/*.parquet"))) >= 2:  # two generate units done, one to go
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the build finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "shards").exists()
    result = Build(parse_config(cfg_dict)).run()
    gen = next(s for s in result.summaries if s.stage == "generate")
    assert "already there" in gen.note and not gen.note.startswith("(0 generated")
    assert tars(result.out_dir) == tars(reference.out_dir)
    assert verify_dataset(result.out_dir) == []


def test_scores_hold_rewards_metrics_and_advantages(built):
    import numpy as np

    from schemas.tables import REWARD_MODEL_NAMES, VIDEO_METRIC_NAMES

    _, result = built
    scores = pq.read_table(result.out_dir / "scores").to_pandas()
    assert scores[list(REWARD_MODEL_NAMES)].notna().all().all()
    video, image = scores[scores.modality == "video"], scores[scores.modality == "image"]
    assert video[list(VIDEO_METRIC_NAMES)].notna().all().all()
    assert image[list(VIDEO_METRIC_NAMES)].isna().all().all()
    assert ((video.temporal_flicker > 0) & (video.temporal_flicker <= 1)).all()
    for _, group in scores.groupby("prompt_id"):
        s = group["pickscore"].to_numpy(np.float64)
        expected = (s - s.mean()) / s.std() if s.std() > 0 else np.zeros_like(s)
        np.testing.assert_allclose(group["pickscore_advantage"], expected, rtol=1e-4, atol=1e-4)  # float32 storage


def test_judge_stage_filters_with_the_vlm_and_records_its_probability(built, tmp_path):
    cfg, result = built
    out = tmp_path / "judged"
    shutil.copytree(result.out_dir, out, ignore=shutil.ignore_patterns("shards", "card"))
    data = cfg.model_dump(mode="json")
    data["output_dir"] = str(out)
    data["judge"] = {"backend": "transformers", "model": "tiny", "min_probability": 0.5, "image_size": 56,
                     "video_frames": 2, "resources": {"num_cpus": 1, "num_actors": 1, "batch_size": 4}}
    judged = Build(parse_config(data)).run(["judge", "select", "write"])
    summary = {s.stage: s for s in judged.summaries}
    pairs = pq.read_table(out / "pairs").to_pandas()
    assert summary["judge"].n_in == int(pairs.kept.sum())
    judgements = pq.read_table(out / "judgements").to_pandas().set_index("pair_id")
    assert set(judgements.index) == set(pairs[pairs.kept].pair_id)
    selected = pq.read_table(out / "selected").to_pandas()
    assert (selected.p_vlm >= 0.5).all()
    assert (selected.p_vlm.to_numpy() == judgements.loc[selected.pair_id, "p_winner"].to_numpy()).all()
    dropped = pq.read_table(out / "dropped").to_pandas()
    refused = judgements[judgements.p_winner < 0.5].index
    assert set(dropped[dropped.reason == "vlm_disagrees"].pair_id) == set(refused)
    assert verify_dataset(out) == []
    for tar in (out / "shards").rglob("*.tar"):
        import tarfile

        with tarfile.open(tar) as t:
            for m in t:
                if m.name.endswith(".json"):
                    meta = json.loads(t.extractfile(m).read())
                    assert abs(meta["vlm_probability"] - judgements.loc[meta["pair_id"], "p_winner"]) < 1e-6


def test_prompt_files_join_the_library_and_bad_rows_are_listed(ray_session, vipo_cache, tmp_path):
    prompts = tmp_path / "mine.jsonl"
    prompts.write_text(
        '{"prompt": "a red fox asleep in a teacup", "category": "aesthetics"}\n'
        '{"prompt": "a bicycle", "category": "landscapes"}\n'
        "not json\n"
    )
    data = small_config(vipo_cache, tmp_path / "b")
    data["prompt_files"] = [str(prompts)]
    result = Build(parse_config(data)).run(["prompts"])
    table = pq.read_table(tmp_path / "b" / "prompts").to_pandas()
    mine = table[table.source == "mine.jsonl"]
    assert mine.prompt.tolist() == ["a red fox asleep in a teacup"]
    assert len(table) == 2 + 2 + 1  # two library prompts per category, plus the file's good row
    problems = (tmp_path / "b" / "prompts" / "_problems.txt").read_text().splitlines()
    assert len(problems) == 2 and problems[0].startswith(f"{prompts}:2:") and problems[1].startswith(f"{prompts}:3:")
    assert result.summaries[0].dropped == {"bad_row": 2}


def test_reward_models_split_over_two_actor_pools_give_the_same_scores(built, tmp_path):
    cfg, result = built
    out = tmp_path / "split"
    shutil.copytree(result.out_dir, out, ignore=shutil.ignore_patterns("scores", "scores_raw", "pairs", "selected", "shards", "card"))
    data = cfg.model_dump(mode="json")
    data["output_dir"] = str(out)
    res = data["scoring"]["resources"]
    data["scoring"]["groups"] = [
        {"models": ["pickscore", "hpsv21"], "resources": res},
        {"models": ["imagereward", "clipscore", "aesthetic"], "resources": res},
    ]
    Build(parse_config(data)).run(["score"])
    assert sorted(p.name for p in (out / "scores_raw").iterdir()) == ["group-0", "group-1"]
    split = pq.read_table(out / "scores")
    whole = pq.read_table(result.out_dir / "scores")
    assert split.equals(whole)  # video metrics ride with the pool that holds clipscore, as before


def test_score_groups_must_cover_every_model_once():
    from schemas.config import ConfigError

    data = small_config(Path("/tmp"), Path("/tmp/x"))
    data["scoring"]["groups"] = [{"models": ["pickscore", "hpsv21"]}, {"models": ["hpsv21", "clipscore"]}]
    with pytest.raises(ConfigError, match=r"scoring: groups: must name each of"):
        parse_config(data, "c.yaml")
