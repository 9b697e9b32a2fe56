"""Generators: the registry, config resolution, and tiny twins through the real load/run path.

Tiny pipelines are built, `save_pretrained` to a temp folder and loaded back with `load_pipeline`,
the call a hub id or a local checkpoint takes.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.generators import REGISTRY, WAN_NEGATIVE_PROMPT, GeneratorSpec, load_pipeline, resolve_generator, run_pipeline
from pipeline.tiny_generators import TINY_FAMILIES, build_tiny
from schemas.config import GeneratorConfig

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["a red cube on a table", "a cat surfing a wave"]
# Transcribed from Wan-Video/Wan2.1 wan/configs/shared_config.py (`wan_shared_cfg.sample_neg_prompt`), which
# wan/text2video.py uses whenever n_prompt is "".
WAN21_SAMPLE_NEG_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，"
    "残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走"
)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict[str, str]:
    dirs = {}
    for family in ("sd15", "wan21"):
        folder = tmp_path_factory.mktemp(f"tiny-{family}")
        build_tiny(family, seed=0).save_pretrained(folder)
        dirs[family] = str(folder)
    return dirs


@pytest.fixture(scope="module")
def pipes(tiny_dirs) -> dict[str, object]:
    return {name: load_pipeline(REGISTRY[name], tiny_dirs[REGISTRY[name].family]) for name in ("tiny-sd15", "tiny-wan21")}


# --- registry and resolution -------------------------------------------------------------------


def test_registry_entries():
    import diffusers

    expected = {
        "sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline", "sd35-medium": "StableDiffusion3Pipeline",
        "flux-dev": "FluxPipeline", "flux-schnell": "FluxPipeline", "wan21-1.3b": "WanPipeline",
        "wan21-14b": "WanPipeline", "tiny-sd15": "StableDiffusionPipeline", "tiny-wan21": "WanPipeline",
        "tiny-sdxl": "StableDiffusionXLPipeline", "tiny-sd3": "StableDiffusion3Pipeline", "tiny-flux": "FluxPipeline",
    }
    for name, cls in expected.items():
        spec = REGISTRY[name]
        assert spec.name == name and spec.pipeline_class == cls and hasattr(diffusers, cls)
        assert {"height", "width", "num_inference_steps", "guidance_scale"} <= set(spec.call_kwargs)
        if spec.modality == "video":
            assert spec.fps == 16.0 and (spec.call_kwargs["num_frames"] - 1) % 4 == 0
        else:
            assert spec.fps is None
    assert REGISTRY["tiny-sd15"].model == REGISTRY["tiny-wan21"].model == "tiny"
    assert (REGISTRY["tiny-sd15"].call_kwargs["height"], REGISTRY["tiny-wan21"].call_kwargs["height"]) == (64, 32)
    assert REGISTRY["tiny-wan21"].call_kwargs["num_frames"] == 9
    assert {s.family for s in REGISTRY.values() if s.model == "tiny"} == set(TINY_FAMILIES)


def test_resolve_known_generator_merges_config():
    plain = resolve_generator(GeneratorConfig(name="sdxl"))
    assert plain == REGISTRY["sdxl"]  # nothing set: the registry entry, dtype included
    spec = resolve_generator(
        GeneratorConfig(name="sdxl", model="/models/sdxl", dtype="float32",
                        call_kwargs={"num_inference_steps": 30, "negative_prompt": "blurry"})
    )
    assert spec.model == "/models/sdxl" and spec.dtype == "float32" and spec.family == "sdxl"
    assert spec.call_kwargs == {**REGISTRY["sdxl"].call_kwargs, "num_inference_steps": 30, "negative_prompt": "blurry"}
    wan = resolve_generator(GeneratorConfig(name="wan21-1.3b", call_kwargs={"scheduler_kwargs": {"flow_shift": 5.0}}))
    assert wan.scheduler_kwargs == {"flow_shift": 5.0} and "scheduler_kwargs" not in wan.call_kwargs


def test_resolve_new_generator_from_config_only():
    cfg = GeneratorConfig(name="my-wan", model="/models/wan", pipeline_class="WanPipeline", modality="video",
                          call_kwargs={"height": 480, "width": 832, "num_frames": 33})
    spec = resolve_generator(cfg)
    assert isinstance(spec, GeneratorSpec)
    assert (spec.family, spec.modality, spec.fps, spec.call_kwargs["num_frames"]) == ("wan21", "video", 16.0, 33)
    assert spec.call_kwargs["negative_prompt"] == WAN21_SAMPLE_NEG_PROMPT  # any WanPipeline: the authors' default
    other = resolve_generator(
        GeneratorConfig(name="pixart", model="x/y", pipeline_class="PixArtAlphaPipeline", modality="image")
    )
    assert other.family == "custom" and other.call_kwargs == {}


def test_resolve_errors():
    with pytest.raises(ValueError, match=r"'my-gen'.*pipeline_class, modality"):
        resolve_generator(GeneratorConfig(name="my-gen", model="some/model"))
    with pytest.raises(ValueError, match="NoSuchPipeline"):
        resolve_generator(GeneratorConfig(name="x", model="m", pipeline_class="NoSuchPipeline", modality="image"))
    with pytest.raises(ValueError, match=r"num_frames=10"):
        resolve_generator(GeneratorConfig(name="wan21-1.3b", call_kwargs={"num_frames": 10}))
    with pytest.raises(ValueError, match="run_pipeline"):
        resolve_generator(GeneratorConfig(name="sd15", call_kwargs={"num_images_per_prompt": 2}))


def test_wan_default_negative_prompt_is_the_authors():
    assert WAN_NEGATIVE_PROMPT == WAN21_SAMPLE_NEG_PROMPT
    for name in ("wan21-1.3b", "wan21-14b", "tiny-wan21"):
        assert REGISTRY[name].call_kwargs["negative_prompt"] == WAN21_SAMPLE_NEG_PROMPT
    assert all("negative_prompt" not in s.call_kwargs for s in REGISTRY.values() if s.family != "wan21")
    # Wan's generate.py defaults (50 steps, guidance 5.0, 81 frames at 16 fps) and diffusers' flow_shift per size
    assert {k: REGISTRY["wan21-14b"].call_kwargs[k] for k in ("num_frames", "num_inference_steps", "guidance_scale")} == {
        "num_frames": 81, "num_inference_steps": 50, "guidance_scale": 5.0}
    assert (REGISTRY["wan21-1.3b"].scheduler_kwargs, REGISTRY["wan21-14b"].scheduler_kwargs) == ({"flow_shift": 3.0}, {"flow_shift": 5.0})
    # configurable: a config's negative prompt (or "", diffusers' own default) replaces it
    plain = resolve_generator(GeneratorConfig(name="wan21-1.3b", call_kwargs={"negative_prompt": ""}))
    assert plain.call_kwargs["negative_prompt"] == ""


def test_wan_negative_prompt_reaches_the_unconditional_pass(pipes):
    """The default negative prompt is what the transformer's unconditional (CFG) pass is conditioned on:
    its encoder_hidden_states equal the text encoder's embedding of Wan's sample_neg_prompt."""
    spec, pipe = REGISTRY["tiny-wan21"], pipes["tiny-wan21"]
    seen: list[torch.Tensor] = []

    def grab(module, args, kwargs):
        seen.append(kwargs["encoder_hidden_states"].detach().clone())

    hook = pipe.transformer.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        default = run_pipeline(pipe, spec, PROMPTS[:1], [11], {})[0]
        steps = spec.call_kwargs["num_inference_steps"]
        assert len(seen) == 2 * steps  # guidance 5.0: a conditional and an unconditional pass per step
        uncond_default = seen[1::2]
        seen.clear()
        empty = run_pipeline(pipe, spec, PROMPTS[:1], [11], {"negative_prompt": ""})[0]
        uncond_empty = seen[1::2]
    finally:
        hook.remove()
    with torch.no_grad():
        expected, _ = pipe.encode_prompt(prompt=WAN21_SAMPLE_NEG_PROMPT, do_classifier_free_guidance=False,
                                         max_sequence_length=spec.call_kwargs["max_sequence_length"])
        blank, _ = pipe.encode_prompt(prompt="", do_classifier_free_guidance=False,
                                      max_sequence_length=spec.call_kwargs["max_sequence_length"])
    assert all(torch.equal(e, expected) for e in uncond_default)
    assert all(torch.equal(e, blank) for e in uncond_empty) and not torch.equal(expected, blank)
    assert not np.array_equal(default, empty)  # the negative prompt changes the pixels


# --- tiny twins --------------------------------------------------------------------------------


def test_build_tiny_deterministic_and_unknown():
    a, b, c = (build_tiny("wan21", seed=s).transformer.state_dict() for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    state = torch.random.get_rng_state()
    build_tiny("wan21", seed=3)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is left alone
    with pytest.raises(ValueError, match="no tiny twin"):
        build_tiny("nope")


def test_load_pipeline_settings(pipes, tiny_dirs):
    sd, wan = pipes["tiny-sd15"], pipes["tiny-wan21"]
    assert type(sd).__name__ == "StableDiffusionPipeline" and sd.safety_checker is None
    assert type(wan).__name__ == "WanPipeline" and wan.scheduler.config.flow_shift == 3.0
    half = load_pipeline(GeneratorSpec("w", "wan21", "WanPipeline", "tiny", "video", "bfloat16",
                                       REGISTRY["tiny-wan21"].call_kwargs, 16.0, {"flow_shift": 5.0}), tiny_dirs["wan21"])
    assert half.transformer.dtype == torch.bfloat16 and half.vae.dtype == torch.float32
    assert half.scheduler.config.flow_shift == 5.0


@pytest.mark.parametrize("name", ["tiny-sd15", "tiny-wan21"])
def test_run_pipeline_shapes_and_determinism(pipes, name):
    spec, pipe = REGISTRY[name], pipes[name]
    out = run_pipeline(pipe, spec, PROMPTS, [11, 12], {})
    h, w = spec.call_kwargs["height"], spec.call_kwargs["width"]
    shape = (h, w, 3) if spec.modality == "image" else (spec.call_kwargs["num_frames"], h, w, 3)
    assert len(out) == 2 and all(o.shape == shape and o.dtype == np.uint8 for o in out)
    assert all(o.std() > 0 for o in out)  # not a constant frame
    again = run_pipeline(pipe, spec, PROMPTS, [11, 12], {})
    assert all(np.array_equal(a, b) for a, b in zip(out, again))
    reseeded = run_pipeline(pipe, spec, PROMPTS, [11, 13], {})
    assert np.array_equal(reseeded[0], out[0]) and not np.array_equal(reseeded[1], out[1])
    # Batch composition moves float outputs by ~1e-6 on CPU; after rounding to uint8 that is at most
    # one level (in practice zero here). Assert only the bound.
    alone = run_pipeline(pipe, spec, PROMPTS[1:], [12], {})[0]
    assert np.abs(alone.astype(int) - out[1].astype(int)).max() <= 1
    fewer = run_pipeline(pipe, spec, PROMPTS[:1], [11], {"num_inference_steps": 2})[0]
    assert fewer.shape == shape and not np.array_equal(fewer, out[0])


@pytest.mark.parametrize("name", ["tiny-sdxl", "tiny-sd3", "tiny-flux"])
def test_more_tiny_twins_round_trip(tmp_path, name):
    spec = REGISTRY[name]
    build_tiny(spec.family, seed=0).save_pretrained(tmp_path)
    pipe = load_pipeline(spec, str(tmp_path))
    assert type(pipe).__name__ == spec.pipeline_class
    out = run_pipeline(pipe, spec, PROMPTS, [11, 12], {})
    assert [o.shape for o in out] == [(64, 64, 3)] * 2 and all(o.dtype == np.uint8 and o.std() > 0 for o in out)
    again = run_pipeline(pipe, spec, PROMPTS, [11, 12], {})
    assert all(np.array_equal(a, b) for a, b in zip(out, again))


def test_run_pipeline_errors(pipes):
    spec = REGISTRY["tiny-sd15"]
    with pytest.raises(ValueError, match="2 prompts but 1 seeds"):
        run_pipeline(pipes["tiny-sd15"], spec, PROMPTS, [1], {})
    with pytest.raises(ValueError, match="run_pipeline"):
        run_pipeline(pipes["tiny-sd15"], spec, PROMPTS, [1, 2], {"output_type": "pil"})

    def nan_pipe(**kwargs):
        return (np.full((len(kwargs["prompt"]), 4, 4, 3), np.nan, dtype=np.float32),)

    with pytest.raises(FloatingPointError, match="NaN"):
        run_pipeline(nan_pipe, spec, PROMPTS, [1, 2], {})


_CHILD = """
import json, sys, hashlib, torch
torch.set_num_threads(int(sys.argv[1]))
from pipeline.generators import REGISTRY, load_pipeline, run_pipeline
dirs = json.loads(sys.argv[2])
digests = {}
for name in ("tiny-sd15", "tiny-wan21"):
    spec = REGISTRY[name]
    outs = run_pipeline(load_pipeline(spec, dirs[spec.family]), spec, %r, [11, 12], {})
    digests[name] = [hashlib.sha256(o.tobytes()).hexdigest() for o in outs]
print(json.dumps(digests))
""" % (PROMPTS,)


def test_same_pixels_in_another_process(pipes, tiny_dirs):
    """A rerun in a fresh process (same thread count) reproduces the pixels bit for bit."""
    import hashlib

    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(torch.get_num_threads()), json.dumps(tiny_dirs)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=True,
    )
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("tiny-sd15", "tiny-wan21"):
        outs = run_pipeline(pipes[name], REGISTRY[name], PROMPTS, [11, 12], {})
        assert child[name] == [hashlib.sha256(o.tobytes()).hexdigest() for o in outs]
