"""`cli.py eval` end to end on the tiny models: a candidate that is the base changes nothing, a planted
better candidate is found better, a train run's LoRA is what gets evaluated, a rerun or a new
candidate costs only what is new, and the report renders in a real browser."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.eval.run import Evaluation
from pipeline.media import MediaStore
from pipeline.score import ScoreStage
from schemas.config_io import ConfigError
from schemas.eval_config import apply_flags, parse_eval_config
from tests.browser import screenshot
from tests.conftest import REPO

PROMPTS = {"aesthetics": 3, "composition": 3}
TINY_REWARDS = [{"name": n, "model": "tiny"} for n in ("pickscore", "hpsv21", "imagereward", "clipscore", "aesthetic")]


def _config(out, cache, candidates, *, rewards=TINY_REWARDS, judge=True, **over) -> dict:
    data = {
        "output_dir": str(out), "cache_dir": str(cache),
        "base": {"name": "base", "generator": "tiny-sd15"},
        "candidates": candidates,
        "prompts": {"source": "held_out", "categories": PROMPTS},
        "seeds_per_prompt": 2,
        "sampling": {"num_inference_steps": 2},
        "generation": {"num_actors": 1, "batch_size": 4},
        "scoring": {"reward_models": rewards, "resources": {"num_actors": 1, "batch_size": 8}},
        "bootstrap": {"resamples": 500},
        "report": {"examples": 3},
        "ray": {"num_cpus": 2},
    }
    if judge:
        data["judge"] = {"model": "tiny", "image_size": 56, "resources": {"num_actors": 1, "batch_size": 8}}
    data.update(over)
    return data


def _media_hashes(out, rows: pd.DataFrame) -> dict:
    store = MediaStore(out / "media")
    return {(r.prompt_id, r.seed): hashlib.sha256(store.read(r.media_path)).hexdigest() for r in rows.itertuples()}


@pytest.fixture(scope="module")
def same(ray_session, vipo_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-same")
    cfg = parse_eval_config(_config(out, vipo_cache, [{"name": "same", "generator": "tiny-sd15"}]), "test")
    return out, Evaluation(cfg).run()


def test_a_candidate_that_is_the_base_changes_nothing(same):
    out, result = same
    df = pd.read_parquet(out / "scores.parquet")
    assert len(df) == 2 * sum(PROMPTS.values()) * 2 and (df["status"] == "ok").all()
    base, cand = df[df["model"] == "base"], df[df["model"] == "same"]
    assert _media_hashes(out, base) == _media_hashes(out, cand)  # same prompts, same seeds: identical pixels
    s = result.summary
    assert s["metrics"] == ["pickscore", "hpsv21", "imagereward", "clipscore", "aesthetic"]
    comp = s["comparisons"]["same"]
    for scope in [comp["overall"], *comp["by_category"].values()]:
        for m, c in scope.items():
            w = c["win_rate"]
            assert w["low"] <= 0.5 <= w["high"] and w["estimate"] == 0.5, m
            assert (c["wins"], c["losses"], c["significant"]) == (0, 0, False)
            assert c["mean_difference"]["estimate"] == 0.0
    vlm = comp["vlm"]["overall"]  # identical media in both orders: P(candidate better) = 1/2 exactly
    assert vlm["p_candidate"]["estimate"] == 0.5 and vlm["win_rate"]["low"] <= 0.5 <= vlm["win_rate"]["high"]
    assert vlm["significant"] is False and vlm["ties"] == len(cand)
    align = s["alignment"]
    assert align["base"]["overall"]["estimate"] == align["same"]["overall"]["estimate"]
    assert 0 < align["base"]["overall"]["estimate"] < 1
    for m in ("base", "same"):  # both models' means agree exactly
        assert s["means"]["base"]["overall"]["pickscore"]["estimate"] == s["means"][m]["overall"]["pickscore"]["estimate"]
    assert json.loads((out / "summary.json").read_text()) == s
    assert s["prompts"]["per_category"] == PROMPTS and s["counts"]["same"]["scored"] == len(cand)


def test_held_out_prompts_are_the_librarys_split(same):
    from pipeline.prompts import held_out_prompts

    out, _ = same
    df = pd.read_parquet(out / "scores.parquet")
    expect = held_out_prompts(PROMPTS, 0)
    assert set(df["prompt"]) == set(expect["prompt"].to_pylist())


def test_rerun_is_a_no_op_and_a_new_candidate_costs_only_itself(same, vipo_cache):
    out, first = same
    cfg = parse_eval_config(_config(out, vipo_cache, [{"name": "same", "generator": "tiny-sd15"}]), "test")
    again = Evaluation(cfg).run()
    assert [s.units_run for s in again.summaries] == [0] * len(again.summaries)
    assert again.summary["comparisons"] == first.summary["comparisons"]
    more = parse_eval_config(_config(out, vipo_cache, [{"name": "same", "generator": "tiny-sd15"},
                                                       {"name": "twin", "generator": "tiny-sd15"}],
                                     sampling={"num_inference_steps": 2}), "test")
    grown = Evaluation(more).run()
    generate = next(s for s in grown.summaries if s.stage == "generate")
    assert generate.now == 2 * sum(PROMPTS.values()) and generate.before == 2 * 2 * sum(PROMPTS.values())
    assert set(grown.summary["comparisons"]) == {"same", "twin"}


def test_report_renders_in_headless_chromium(same, tmp_path):
    out, result = same
    html = result.report.read_text()
    assert "<script" not in html and html.count('class="pair"') + html.count("<figure") >= 3
    console, img = screenshot(result.report, tmp_path)
    assert console == []
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50 and img.std() > 10


# ----------------------------------------------------------------------------- a planted better model


class Redness:
    """A planted reward (tests only): mean red minus mean blue of the image, in [-1, 1]."""

    def score(self, images, prompts):
        arr = [np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0 for im in images]
        return [float(a[..., 0].mean() - a[..., 2].mean()) for a in arr]


@dataclass
class RednessScoreStage(ScoreStage):
    def setup(self) -> None:
        self.loaded = {name: Redness() for name, *_ in self.models}


@pytest.fixture(scope="module")
def redder_model(tmp_path_factory) -> str:
    """tiny-sd15 whose VAE decoder adds red and removes blue: better on the planted reward by construction."""
    from pipeline.tiny_generators import build_tiny

    pipe = build_tiny("sd15", seed=0)
    with torch.no_grad():
        pipe.vae.decoder.conv_out.bias += torch.tensor([0.3, 0.0, -0.3])
    folder = tmp_path_factory.mktemp("redder")
    pipe.save_pretrained(folder)
    return str(folder)


def test_a_planted_better_candidate_wins(ray_session, vipo_cache, tmp_path, redder_model):
    import sys

    ray_session.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the planted scorer lives in this test

    class Planted(Evaluation):
        score_stage = RednessScoreStage

    data = _config(tmp_path, vipo_cache, [{"name": "redder", "generator": "tiny-sd15", "model": redder_model}],
                   rewards=[{"name": "pickscore", "model": "tiny"}], judge=False)
    result = Planted(parse_eval_config(data, "test")).run()
    comp = result.summary["comparisons"]["redder"]["overall"]["pickscore"]
    n = 2 * sum(PROMPTS.values())
    assert comp["wins"] == n and comp["win_rate"]["estimate"] == 1.0 and comp["win_rate"]["low"] > 0.5
    assert comp["significant"] and comp["sign_test_p"] == pytest.approx(2 * 0.5 ** n)
    assert comp["mean_difference"]["low"] > 0
    assert result.summary["comparisons"]["redder"]["vlm"] is None and result.summary["alignment"] is None


def test_a_train_run_is_evaluated_with_its_lora(ray_session, vipo_cache, tmp_path):
    """The candidate named by a `cli.py train` folder renders with its final/ LoRA: other pixels, same seeds."""
    from tests.test_trainer_loop import ColourPairs, _cfg
    from trainer.loop import train

    run = tmp_path / "run"
    train(_cfg(run, None, max_steps=10, batch_size=2, cache_dir=str(vipo_cache)), loader=ColourPairs(10, 2, seed=1))
    data = _config(tmp_path / "eval", vipo_cache, [{"name": "trained", "train_run": str(run)}],
                   rewards=[{"name": "aesthetic", "model": "tiny"}], judge=False,
                   prompts={"source": "held_out", "categories": {"aesthetics": 2}})
    result = Evaluation(parse_eval_config(data, "test")).run()
    df = pd.read_parquet(tmp_path / "eval" / "scores.parquet")
    base, cand = df[df["model"] == "base"], df[df["model"] == "trained"]
    assert sorted(zip(base["prompt_id"], base["seed"])) == sorted(zip(cand["prompt_id"], cand["seed"]))
    hb, hc = _media_hashes(tmp_path / "eval", base), _media_hashes(tmp_path / "eval", cand)
    assert any(hb[k] != hc[k] for k in hb)
    assert result.summary["candidates"][0]["weights"] == str(run / "final")


# ------------------------------------------------------------------------------------ config and flags


def test_flags_build_the_common_case(tmp_path):
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "train_config.json").write_text("{}")
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "pytorch_lora_weights.safetensors").write_bytes(b"")
    prompts = tmp_path / "p.txt"
    prompts.write_text("aesthetics\ta red fox\n")
    base = {"base": {"name": "base", "generator": "tiny-sd15"}, "candidates": [{"name": "x", "generator": "sd15"}],
            "prompts": {"source": "held_out", "categories": {"aesthetics": 2}}, "scoring": {"reward_models": TINY_REWARDS}}
    data = apply_flags(base, candidates=[str(run), str(lora), "org/some-model"], prompts=str(prompts), out="o")
    cfg = parse_eval_config(data, "flags")
    assert [(c.name, c.train_run, c.lora, c.model, c.generator) for c in cfg.candidates] == [
        ("run", str(run), None, None, None), ("lora", None, str(lora), None, "tiny-sd15"),
        ("some-model", None, None, "org/some-model", "tiny-sd15")]
    assert (cfg.prompts.source, cfg.prompts.files, cfg.output_dir) == ("file", [str(prompts)], "o")
    assert apply_flags(base, base="sdxl")["base"] == {"name": "base", "generator": "sdxl"}


@pytest.mark.parametrize("patch, message", [
    ({"candidates": [{"name": "base", "generator": "tiny-sd15"}]}, "candidates: model names must be distinct"),
    ({"candidates": [{"name": "a b", "generator": "tiny-sd15"}]}, "candidates.0.name: String should match pattern"),
    ({"candidates": [{"name": "a", "train_run": "x", "lora": "y"}]}, "candidates.0: train_run: names its own"),
    ({"prompts": {"source": "held_out"}}, "prompts: categories: the held_out source needs"),
    ({"prompts": {"source": "held_out", "categories": {"landscapes": 3}}}, "prompts.categories: unknown category"),
    ({"seeds_per_prompt": 0}, "seeds_per_prompt: Input should be greater than or equal to 1"),
])
def test_bad_configs_are_one_line(patch, message, tmp_path, vipo_cache):
    data = {**_config(tmp_path, vipo_cache, [{"name": "c", "generator": "tiny-sd15"}]), **patch}
    with pytest.raises(ConfigError) as err:
        parse_eval_config(data, "eval.yaml")
    assert str(err.value).startswith("eval.yaml: ") and message in str(err.value) and "\n" not in str(err.value)


def test_preflight_names_the_bad_model(tmp_path, vipo_cache):
    data = _config(tmp_path / "out", vipo_cache, [{"name": "c", "generator": "tiny-sd15", "lora": str(tmp_path)}])
    with pytest.raises(ConfigError, match=r"eval.yaml: candidates.0.lora: .*: no pytorch_lora_weights.safetensors"):
        Evaluation(parse_eval_config(data, "eval.yaml"), source="eval.yaml").run()
    data["candidates"] = [{"name": "c", "train_run": str(tmp_path / "nowhere")}]
    with pytest.raises(ConfigError, match=r"candidates.0.train_run: .*nowhere: no train_config.json"):
        Evaluation(parse_eval_config(data, "eval.yaml"), source="eval.yaml").run()
    data["candidates"] = [{"name": "c", "generator": "tiny-wan21"}]
    with pytest.raises(ConfigError, match="candidates.0: c makes videos, the base images"):
        Evaluation(parse_eval_config(data, "eval.yaml"), source="eval.yaml").run()
    assert not (tmp_path / "out").exists()  # nothing written before the checks pass


@pytest.mark.parametrize("preset", sorted(p.name for p in (REPO / "configs").glob("eval-*.yaml")))
def test_presets_load(preset):
    from schemas.eval_config import load_eval_config

    cfg = load_eval_config(REPO / "configs" / preset)
    assert cfg.candidates and (cfg.prompts.source == "held_out" and cfg.prompts.categories)


def test_train_runs_the_eval_every_n_steps(ray_session, vipo_cache, tmp_path):
    """`eval: {every: 2}` in a train config: win rates of steps 2 and 3 (the last) in metrics.csv, the
    base rendered once for both."""
    import csv

    import yaml

    from tests.test_trainer_loop import ColourPairs, _cfg
    from trainer.loop import train

    eval_cfg = _config(tmp_path / "ignored", vipo_cache, [{"name": "x", "generator": "tiny-sd15"}],
                       rewards=[{"name": "aesthetic", "model": "tiny"}], judge=False, seeds_per_prompt=1,
                       prompts={"source": "held_out", "categories": {"aesthetics": 2}})
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(eval_cfg))
    cfg = _cfg(tmp_path / "run", None, max_steps=3, batch_size=2, cache_dir=str(vipo_cache),
               eval={"every": 2, "config": str(path)})
    train(cfg, loader=ColourPairs(3, 2, seed=1))
    with (tmp_path / "run" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["eval_aesthetic_win_rate"] != "" for r in rows] == [False, True, True]
    assert all(0.0 <= float(r["eval_aesthetic_win_rate"]) <= 1.0 for r in rows[1:])
    df = pd.read_parquet(tmp_path / "run" / "eval" / "scores.parquet")
    assert df.groupby("model").size().to_dict() == {"base": 2, "step-00000003": 2}  # the last step's eval
    assert len(list((tmp_path / "run" / "eval" / "media").rglob("*.jpg"))) == 6  # base once, each step's weights
    assert (tmp_path / "run" / "eval" / "weights" / "step-00000002" / "pytorch_lora_weights.safetensors").is_file()


def test_a_video_eval_scores_frames_and_shows_a_strip(ray_session, vipo_cache, tmp_path):
    data = _config(tmp_path, vipo_cache, [{"name": "twin", "generator": "tiny-wan21"}],
                   rewards=[{"name": "clipscore", "model": "tiny"}], seeds_per_prompt=1,
                   prompts={"source": "held_out", "categories": {"motion_quality": 2}}, sampling={"num_inference_steps": 2})
    data["base"] = {"name": "base", "generator": "tiny-wan21"}
    data["judge"]["video_frames"] = 2
    result = Evaluation(parse_eval_config(data, "test")).run()
    s = result.summary
    assert s["metrics"] == ["clipscore", "temporal_flicker", "motion_smoothness", "subject_consistency"]
    assert s["descriptive_metrics"] == ["dynamic_degree"]
    assert s["comparisons"]["twin"]["vlm"]["overall"]["p_candidate"]["estimate"] == 0.5
    assert s["alignment"]["twin"]["overall"]["n"] == 2
    html = result.report.read_text()
    assert html.count("data:image/jpeg;base64,") >= 2 * 2 * (1 + 4)  # a poster and a 4-frame strip per cell, 2 prompts
