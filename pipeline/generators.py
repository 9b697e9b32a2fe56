"""Named generators: which diffusers pipeline renders a candidate, with which default settings.

A generator is data (a `GeneratorSpec`), not code: the registry below holds the published models and
their toy twins, and a config can override any field of a known generator or describe a new one
(`pipeline_class` + `model` + `modality`) without touching this file. Loading is a single
`from_pretrained(path)` whether `path` is a hub id or a local folder, so the tiny twins the tests use
go through the exact code a real checkpoint takes.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from schemas.config import GeneratorConfig

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

TINY_MODEL = "tiny"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Call arguments run_pipeline owns: one output per prompt, one seeded generator per prompt, numpy out.
_RESERVED = ("prompt", "generator", "output_type", "num_images_per_prompt", "num_videos_per_prompt", "return_dict")
_FAMILY_OF_CLASS = {
    "StableDiffusionPipeline": "sd15",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
    "FluxPipeline": "flux",
    "WanPipeline": "wan21",
}


@dataclass(frozen=True)
class GeneratorSpec:
    """A resolved generator. `call_kwargs` are the pipeline call defaults (height, width, steps, ...)."""

    name: str
    family: str  # sd15 | sdxl | sd3 | flux | wan21 (or "custom" for a config-only generator)
    pipeline_class: str  # a diffusers class name, looked up with getattr(diffusers, ...)
    model: str  # hub id, local folder, or "tiny" (the family's toy twin, built offline)
    modality: Literal["image", "video"]
    dtype: str = "float32"
    call_kwargs: dict[str, Any] = field(default_factory=dict)
    fps: float | None = None  # frame rate the model was trained for (videos)
    # Applied to the loaded scheduler with `from_config(..., **scheduler_kwargs)`; Wan's flow_shift
    # depends on the resolution and is not a call argument. Config: call_kwargs["scheduler_kwargs"].
    scheduler_kwargs: dict[str, Any] = field(default_factory=dict)


def _image(name: str, family: str, cls: str, model: str, dtype: str, **call: Any) -> GeneratorSpec:
    return GeneratorSpec(name, family, cls, model, "image", dtype, call)


# Wan2.1's default negative prompt: `sample_neg_prompt` in Wan-Video/Wan2.1 wan/configs/shared_config.py.
# Its text2video.py substitutes it whenever the caller's n_prompt is "" (diffusers' WanPipeline would
# encode "" instead), so every Wan generator passes it unless a config sets its own `negative_prompt`.
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
_WAN_CALL_DEFAULTS: dict[str, Any] = {"negative_prompt": WAN_NEGATIVE_PROMPT}


def _wan(name: str, model: str, dtype: str, flow_shift: float, **call: Any) -> GeneratorSpec:
    return GeneratorSpec(name, "wan21", "WanPipeline", model, "video", dtype, {**_WAN_CALL_DEFAULTS, **call}, 16.0,
                         {"flow_shift": flow_shift})


# Defaults are the ones each model card / the diffusers docs publish (docs/generators.md names each source).
REGISTRY: dict[str, GeneratorSpec] = {
    s.name: s
    for s in (
        _image("sd15", "sd15", "StableDiffusionPipeline", "stable-diffusion-v1-5/stable-diffusion-v1-5", "float16",
               height=512, width=512, num_inference_steps=50, guidance_scale=7.5),
        _image("sdxl", "sdxl", "StableDiffusionXLPipeline", "stabilityai/stable-diffusion-xl-base-1.0", "float16",
               height=1024, width=1024, num_inference_steps=50, guidance_scale=5.0),
        _image("sd35-medium", "sd3", "StableDiffusion3Pipeline", "stabilityai/stable-diffusion-3.5-medium", "bfloat16",
               height=1024, width=1024, num_inference_steps=40, guidance_scale=4.5),
        _image("flux-dev", "flux", "FluxPipeline", "black-forest-labs/FLUX.1-dev", "bfloat16",
               height=1024, width=1024, num_inference_steps=50, guidance_scale=3.5, max_sequence_length=512),
        _image("flux-schnell", "flux", "FluxPipeline", "black-forest-labs/FLUX.1-schnell", "bfloat16",
               height=1024, width=1024, num_inference_steps=4, guidance_scale=0.0, max_sequence_length=256),
        # flow_shift 3.0 (480p) / 5.0 (720p): diffusers' Wan recommendation; Wan's generate.py samples T2V with 5.0.
        _wan("wan21-1.3b", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "bfloat16", 3.0,
             height=480, width=832, num_frames=81, num_inference_steps=50, guidance_scale=5.0),
        _wan("wan21-14b", "Wan-AI/Wan2.1-T2V-14B-Diffusers", "bfloat16", 5.0,
             height=720, width=1280, num_frames=81, num_inference_steps=50, guidance_scale=5.0),
        # Toy twins (pipeline/tiny_generators.py): same classes, random weights, CPU-fast.
        _image("tiny-sd15", "sd15", "StableDiffusionPipeline", TINY_MODEL, "float32",
               height=64, width=64, num_inference_steps=4, guidance_scale=7.5),
        _image("tiny-sdxl", "sdxl", "StableDiffusionXLPipeline", TINY_MODEL, "float32",
               height=64, width=64, num_inference_steps=4, guidance_scale=5.0),
        _image("tiny-sd3", "sd3", "StableDiffusion3Pipeline", TINY_MODEL, "float32",
               height=64, width=64, num_inference_steps=4, guidance_scale=4.5, max_sequence_length=32),
        _image("tiny-flux", "flux", "FluxPipeline", TINY_MODEL, "float32",
               height=64, width=64, num_inference_steps=4, guidance_scale=3.5, max_sequence_length=32),
        _wan("tiny-wan21", TINY_MODEL, "float32", 3.0,
             height=32, width=32, num_frames=9, num_inference_steps=4, guidance_scale=5.0, max_sequence_length=32),
    )
}


def _check_pipeline_class(name: str, cls: str) -> None:
    import diffusers

    if not hasattr(diffusers, cls):
        raise ValueError(f"generator {name!r}: pipeline_class {cls!r} is not a class of diffusers {diffusers.__version__}")


def check_call_kwargs(spec: GeneratorSpec, kwargs: dict[str, Any]) -> None:
    """Refuse settings the pipeline would silently change (so recorded params match the pixels)."""
    clash = sorted(set(kwargs) & set(_RESERVED))
    if clash:
        raise ValueError(f"generator {spec.name!r}: {clash} are set by run_pipeline and cannot be call arguments")
    if spec.family == "wan21":
        frames, h, w = kwargs.get("num_frames", 81), kwargs.get("height", 480), kwargs.get("width", 832)
        if (frames - 1) % 4:
            raise ValueError(f"generator {spec.name!r}: num_frames={frames}, Wan needs (num_frames - 1) % 4 == 0")
        if h % 16 or w % 16:
            raise ValueError(f"generator {spec.name!r}: height/width {h}x{w}, Wan needs multiples of 16")


def resolve_generator(cfg: GeneratorConfig) -> GeneratorSpec:
    """The registry entry named `cfg.name`, overridden by what the config sets; or a config-only generator.

    `dtype` overrides only when the config sets it explicitly (the config model's own default would
    otherwise always win over the registry's). `call_kwargs` merge key by key, config last.
    """
    call = dict(cfg.call_kwargs)
    sched = dict(call.pop("scheduler_kwargs", None) or {})
    dtype = cfg.dtype if "dtype" in cfg.model_fields_set else None
    base = REGISTRY.get(cfg.name)
    if base is None:
        missing = [f for f in ("pipeline_class", "model", "modality") if getattr(cfg, f) is None]
        if missing:
            raise ValueError(
                f"generator {cfg.name!r} is not in the registry ({', '.join(REGISTRY)}); "
                f"a new generator must set {', '.join(missing)} in its config"
            )
        wan = cfg.pipeline_class == "WanPipeline"
        base = GeneratorSpec(
            cfg.name, _FAMILY_OF_CLASS.get(cfg.pipeline_class, "custom"), cfg.pipeline_class, cfg.model, cfg.modality,
            call_kwargs=dict(_WAN_CALL_DEFAULTS) if wan else {}, fps=16.0 if wan else None,
        )
    spec = replace(
        base,
        model=cfg.model or base.model,
        pipeline_class=cfg.pipeline_class or base.pipeline_class,
        modality=cfg.modality or base.modality,
        dtype=dtype or base.dtype,
        call_kwargs={**base.call_kwargs, **call},
        scheduler_kwargs={**base.scheduler_kwargs, **sched},
    )
    _check_pipeline_class(spec.name, spec.pipeline_class)
    check_call_kwargs(spec, spec.call_kwargs)
    return spec


def load_pipeline(spec: GeneratorSpec, path: str, device: str = "cpu") -> DiffusionPipeline:
    """Load `spec`'s pipeline from a hub id or a local folder (one code path) and move it to `device`.

    No safety checker (it blacks out candidates instead of letting the raters judge them); the Wan VAE
    stays in float32 as its authors recommend (half-precision decoding shows artefacts).
    """
    import diffusers

    cls = getattr(diffusers, spec.pipeline_class)
    dtype = _DTYPES[spec.dtype]
    # `dtype=` is diffusers 0.42's spelling of torch_dtype (which now warns); a dict sets it per component.
    kwargs: dict[str, Any] = {"dtype": {"default": dtype, "vae": torch.float32} if spec.family == "wan21" else dtype}
    if "safety_checker" in inspect.signature(cls.__init__).parameters:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    pipe = cls.from_pretrained(path, **kwargs)
    if spec.scheduler_kwargs:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, **spec.scheduler_kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray((np.clip(x, 0.0, 1.0) * 255.0).round().astype(np.uint8))


def run_pipeline(
    pipe: DiffusionPipeline, spec: GeneratorSpec, prompts: list[str], seeds: list[int], params: dict[str, Any]
) -> list[np.ndarray]:
    """Render one candidate per (prompt, seed) in ONE batched call; uint8 (H,W,3) images or (T,H,W,3) videos.

    Noise comes from CPU generators seeded per item, so a candidate's noise does not depend on the
    device or on its batch neighbours. Pixels are bit-identical across calls and processes on the same
    device, torch build and thread count; batch composition can move float outputs by ~1e-6, which
    rounding to uint8 almost always absorbs (off by one at most).
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"generator {spec.name!r}: {len(prompts)} prompts but {len(seeds)} seeds")
    if not prompts:
        return []
    kwargs = {**spec.call_kwargs, **params}
    check_call_kwargs(spec, kwargs)
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    out = pipe(prompt=list(prompts), generator=generators, output_type="np", **kwargs)[0]
    items = [np.asarray(x, dtype=np.float32) for x in out]
    want = 3 if spec.modality == "image" else 4
    bad = [i for i, x in enumerate(items) if np.isnan(x).any()]
    if bad:
        raise FloatingPointError(
            f"generator {spec.name!r} produced NaN pixels for prompts {bad} (dtype {spec.dtype}; "
            "float16 overflow is the usual cause: try bfloat16 or float32)"
        )
    if len(items) != len(prompts) or any(x.ndim != want or x.shape[-1] != 3 for x in items):
        shapes = [x.shape for x in items]
        raise RuntimeError(f"generator {spec.name!r}: expected {len(prompts)} {spec.modality} outputs, got shapes {shapes}")
    return [_to_uint8(x) for x in items]
