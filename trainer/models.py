"""The networks a Poly-DPO run needs: the trainable denoiser, its reference, and frozen encoders.

Everything is loaded through the generator registry (`pipeline.generators`): a registry name such as
`sdxl` or `tiny-sd15`, optionally with a hub id or local folder, goes through the same
`from_pretrained(path)` call a build uses, so the tiny twins in tests exercise the real code.

The reference model is the *same* network with its LoRA adapters disabled when training LoRA (no
second copy in memory), and a frozen deep copy for full fine-tuning. Per family:

| family | denoiser | latents | conditioning | objective |
| --- | --- | --- | --- | --- |
| sd15 | UNet | `vae * scaling_factor` | CLIP hidden states | epsilon / v |
| sdxl | UNet | `vae * scaling_factor` (VAE float32) | both CLIP towers + pooled + six time ids per pair | epsilon / v |
| sd3 | SD3 DiT | `(vae - shift) * scaling` | CLIP x2 + T5, pooled | flow |
| flux | FLUX DiT | `(vae - shift) * scaling`, 2x2 packed | CLIP pooled + T5, guidance | flow |
| wan21 | Wan DiT | Wan video VAE, `(z - mean) / std` | UMT5 | flow |
"""
from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from trainer.objectives import DiffusionObjective, FlowObjective, Objective

__all__ = ["FAMILIES", "LORA_TARGETS", "TrainModel", "load_train_model", "resolve_spec", "sampling_sequence_length"]

FAMILIES = ("sd15", "sdxl", "sd3", "flux", "wan21")
FLOW_FAMILIES = ("sd3", "flux", "wan21")
_UNET_ATTENTION = ("to_k", "to_q", "to_v", "to_out.0")
_MMDIT_ATTENTION = ("attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
                    "attn.to_k", "attn.to_out.0", "attn.to_q", "attn.to_v")
#: Default LoRA target modules per family (peft suffix match on diffusers module names), each the
#: default of the reference training script for that family (docs/training.md names them).
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    # diffusers examples/research_projects/diffusion_dpo/train_diffusion_dpo{,_sdxl}.py
    "sd15": _UNET_ATTENTION,
    "sdxl": _UNET_ATTENTION,
    # diffusers examples/dreambooth/train_dreambooth_lora_sd3.py (no --lora_layers)
    "sd3": _MMDIT_ATTENTION,
    # diffusers examples/dreambooth/train_dreambooth_lora_flux.py (no --lora_layers)
    "flux": _MMDIT_ATTENTION + ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"),
    # DiffSynth-Studio diffsynth/diffusion/parsers.py --lora_target_modules "q,k,v,o,ffn.0,ffn.2" (Wan's
    # own names) in diffusers' names: self- and cross-attention q/k/v/out of every block, and its FFN
    "wan21": ("to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"),
}
_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _repeat2(cond: Any) -> Any:
    """Conditioning for a winners-then-losers batch: every tensor stacked twice along dim 0."""
    if isinstance(cond, Tensor):
        return torch.cat([cond, cond])
    if isinstance(cond, dict):
        return {k: _repeat2(v) for k, v in cond.items()}
    return cond


@dataclass
class TrainModel:
    """A loaded pipeline split into what trains (`denoiser`) and what stays frozen."""

    family: str
    pipe: Any  # the diffusers pipeline: frozen VAE, text encoders, tokenizers; the denoiser inside it
    denoiser: nn.Module
    objective: Objective
    lora: bool
    frozen_reference: nn.Module | None = None
    max_sequence_length: int | None = None
    flux_guidance: float = 3.5
    weight_dtype: torch.dtype = torch.float32  # frozen parts' dtype (mixed precision)
    denoiser_attr: str = field(init=False)

    def __post_init__(self) -> None:
        self.denoiser_attr = "unet" if self.family in ("sd15", "sdxl") else "transformer"

    @property
    def device(self) -> torch.device:
        return self.pipe.vae.device

    # -- conditioning -------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], height: int, width: int,
                       original_sizes: list[tuple[int, int]] | None = None,
                       crop_top_lefts: list[tuple[int, int]] | None = None) -> dict[str, Any]:
        """Text conditioning for B prompts, already doubled for the (winners, losers) batch.

        `height`/`width` are the pixel size fed to the VAE. SDXL's micro-conditioning time ids are,
        per pair, (original size, crop top-left, target size) as diffusers' `train_diffusion_dpo_sdxl.py`
        builds them; without `original_sizes` / `crop_top_lefts` (pixels already at their size) they
        say "native size, uncropped": original = target, crop (0, 0).
        """
        p, dev, msl = list(prompts), self.device, self.max_sequence_length
        if self.family == "sd15":
            emb = self.pipe.encode_prompt(p, dev, 1, False)[0]
            cond: dict[str, Any] = {"encoder_hidden_states": emb}
        elif self.family == "sdxl":
            emb, _, pooled, _ = self.pipe.encode_prompt(p, device=dev, num_images_per_prompt=1, do_classifier_free_guidance=False)
            sizes = original_sizes or [(height, width)] * len(p)
            crops = crop_top_lefts or [(0, 0)] * len(p)
            if not len(sizes) == len(crops) == len(p):
                raise ValueError(f"sdxl: {len(p)} prompts, {len(sizes)} original sizes, {len(crops)} crop corners")
            proj = self.pipe.text_encoder_2.config.projection_dim
            ids = torch.cat([
                self.pipe._get_add_time_ids(tuple(size), tuple(crop), (height, width), dtype=emb.dtype,
                                            text_encoder_projection_dim=proj)
                for size, crop in zip(sizes, crops)
            ]).to(dev)
            cond = {"encoder_hidden_states": emb, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": ids}}
        elif self.family == "sd3":
            emb, _, pooled, _ = self.pipe.encode_prompt(
                p, p, p, device=dev, do_classifier_free_guidance=False, max_sequence_length=msl
            )
            cond = {"encoder_hidden_states": emb, "pooled_projections": pooled}
        elif self.family == "flux":
            emb, pooled, text_ids = self.pipe.encode_prompt(p, p, device=dev, max_sequence_length=msl)
            return {"encoder_hidden_states": _repeat2(emb), "pooled_projections": _repeat2(pooled), "txt_ids": text_ids}
        else:  # wan21
            emb, _ = self.pipe.encode_prompt(p, do_classifier_free_guidance=False, max_sequence_length=msl, device=dev)
            cond = {"encoder_hidden_states": emb}
        return _repeat2(cond)

    @torch.no_grad()
    def encode_pixels(self, pixels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Pixels in [-1, 1] -> normalised latents, as the pipeline's decode step expects them inverted."""
        vae = self.pipe.vae
        if self.family == "wan21":
            if pixels.ndim == 4:  # an image is a one-frame video
                pixels = pixels.unsqueeze(2)
            frames = pixels.shape[2]
            if (frames - 1) % 4:
                raise ValueError(f"wan21: {frames} frames per clip; the Wan VAE needs (frames - 1) % 4 == 0 (set data.num_frames)")
        elif pixels.ndim != 4:
            raise ValueError(f"{self.family}: an image model cannot train on video pixels of shape {tuple(pixels.shape)}")
        x = pixels.to(self.device, vae.dtype)
        latents = vae.encode(x).latent_dist.sample(generator=generator)
        cfg = vae.config
        if self.family == "wan21":
            shape = (1, cfg.z_dim, 1, 1, 1)
            mean = torch.tensor(cfg.latents_mean, device=latents.device, dtype=latents.dtype).view(shape)
            std = torch.tensor(cfg.latents_std, device=latents.device, dtype=latents.dtype).view(shape)
            return (latents - mean) / std
        shift = getattr(cfg, "shift_factor", None) or 0.0
        return (latents - shift) * cfg.scaling_factor

    # -- denoising ------------------------------------------------------------------------------
    def predict(self, module: nn.Module, noisy: Tensor, timesteps: Tensor, cond: dict[str, Any]) -> Tensor:
        """One denoiser call in latent layout; `module` is the (possibly accelerate-wrapped) policy or the reference."""
        dtype = next(self.denoiser.parameters()).dtype
        x = noisy.to(dtype)
        if self.family in ("sd15", "sdxl"):
            kw = {"encoder_hidden_states": cond["encoder_hidden_states"]}
            if "added_cond_kwargs" in cond:
                kw["added_cond_kwargs"] = cond["added_cond_kwargs"]
            return module(x, timesteps, **kw).sample
        if self.family == "sd3":
            return module(hidden_states=x, timestep=timesteps, encoder_hidden_states=cond["encoder_hidden_states"],
                          pooled_projections=cond["pooled_projections"]).sample
        if self.family == "wan21":
            return module(hidden_states=x, timestep=timesteps, encoder_hidden_states=cond["encoder_hidden_states"]).sample
        # flux: 2x2 latent patches become tokens; the transformer takes sigma (timestep / 1000)
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"flux: latent size {h}x{w} must be even (2x2 packing); use a resolution divisible by {2 * self.pipe.vae_scale_factor}")
        packed = self.pipe._pack_latents(x, b, c, h, w)
        img_ids = self.pipe._prepare_latent_image_ids(b, h // 2, w // 2, x.device, x.dtype)
        guidance = None
        if self.denoiser.config.guidance_embeds:
            guidance = torch.full((b,), self.flux_guidance, device=x.device, dtype=torch.float32)
        out = module(hidden_states=packed, timestep=timesteps / 1000, guidance=guidance,
                     pooled_projections=cond["pooled_projections"], encoder_hidden_states=cond["encoder_hidden_states"],
                     txt_ids=cond["txt_ids"], img_ids=img_ids).sample
        vsf = self.pipe.vae_scale_factor
        return self.pipe._unpack_latents(out, h * vsf, w * vsf, vsf)

    @contextmanager
    def reference(self, policy: nn.Module | None = None) -> Iterator[nn.Module]:
        """The reference network: the policy with adapters disabled (LoRA) or the frozen copy.

        `policy` is the module to call for LoRA (the accelerate-wrapped one under DDP/FSDP, whose
        parameters may be sharded); adapters are switched on the unwrapped denoiser either way.
        """
        if self.frozen_reference is not None:
            # accelerate autocasts only the prepared policy; the copy holds weight_dtype weights
            dev = self.device.type
            with torch.autocast(dev, dtype=self.weight_dtype, enabled=self.weight_dtype != torch.float32):
                yield self.frozen_reference
            return
        self.denoiser.disable_adapters()
        try:
            yield policy if policy is not None else self.denoiser
        finally:
            self.denoiser.enable_adapters()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.denoiser.parameters() if p.requires_grad]

    # -- export ---------------------------------------------------------------------------------
    def save_final(self, out_dir: str | Path, denoiser: nn.Module | None = None) -> Path:
        """Diffusers-format weights: LoRA via the pipeline's `save_lora_weights` (so
        `pipe.load_lora_weights(out_dir)` works), full weights via the denoiser's `save_pretrained`."""
        from peft.utils import get_peft_model_state_dict

        net = denoiser if denoiser is not None else self.denoiser
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if self.lora:
            from diffusers.utils import convert_state_dict_to_diffusers

            layers = get_peft_model_state_dict(net)
            if self.denoiser_attr == "unet":  # as diffusers' UNet LoRA scripts save it; DiT scripts keep peft keys
                layers = convert_state_dict_to_diffusers(layers)
            type(self.pipe).save_lora_weights(out, **{f"{self.denoiser_attr}_lora_layers": layers})
            return out
        net.save_pretrained(out / self.denoiser_attr)
        return out / self.denoiser_attr


def resolve_spec(generator: str, path: str | None = None, pipeline_class: str | None = None):
    """The registry's GeneratorSpec for `generator` (overridden by path / pipeline_class); no loading."""
    from pipeline.generators import resolve_generator
    from schemas.config import GeneratorConfig

    gcfg = GeneratorConfig(name=generator, model=path, pipeline_class=pipeline_class,
                           modality="video" if pipeline_class == "WanPipeline" else ("image" if pipeline_class else None))
    spec = resolve_generator(gcfg)
    if spec.family not in FAMILIES:
        raise ValueError(f"generator {generator!r}: family {spec.family!r} has no trainer support; supported: {list(FAMILIES)}")
    return spec


def sampling_sequence_length(spec: Any, pipeline_cls: type) -> int | None:
    """T5/UMT5 prompt tokens the generator samples with, so training conditions on the same text length:
    the registry's `max_sequence_length` (flux-schnell: 256) or the pipeline `__call__` default
    (diffusers 0.42: SD3 256, FLUX 512, Wan 512; its `encode_prompt` default of 226 is not what it samples with)."""
    import inspect

    if "max_sequence_length" in spec.call_kwargs:
        return int(spec.call_kwargs["max_sequence_length"])
    param = inspect.signature(pipeline_cls.__call__).parameters.get("max_sequence_length")
    return None if param is None or param.default is inspect.Parameter.empty else int(param.default)


def vae_keeps_float32(family: str, vae_config: Any) -> bool:
    """Whether the frozen VAE stays float32 under mixed precision, as each family's reference does.

    Wan: its authors' float32 VAE. SD3: `train_dreambooth_lora_sd3.py` keeps it float32. SDXL:
    float32 ("to avoid NaN losses", `train_diffusion_dpo_sdxl.py`: the stock VAE overflows in fp16)
    unless the VAE's config says `force_upcast: false`, the flag diffusers' SDXL pipeline reads and
    fp16-safe VAEs such as madebyollin/sdxl-vae-fp16-fix set. SD1.5 and FLUX: the weight dtype, as
    `train_diffusion_dpo.py` and `train_dreambooth_lora_flux.py` cast it.
    """
    if family in ("wan21", "sd3"):
        return True
    if family == "sdxl":
        return bool(getattr(vae_config, "force_upcast", True))
    return False


def _flow_objective(pipe: Any, weighting: str, mean: float, std: float, shift: float | None, target: str) -> FlowObjective:
    return FlowObjective.from_scheduler_config(pipe.scheduler.config, shift=shift, weighting_scheme=weighting,
                                               logit_mean=mean, logit_std=std, target_space=target)


def load_train_model(
    generator: str,
    *,
    path: str | None = None,
    pipeline_class: str | None = None,
    vae: str | None = None,
    lora_rank: int | None = 16,
    lora_alpha: float | None = None,
    lora_targets: tuple[str, ...] | None = None,
    mixed_precision: str = "no",
    prediction_type: str | None = None,
    flow_weighting: str = "logit_normal",
    flow_logit_mean: float = 0.0,
    flow_logit_std: float = 1.0,
    flow_shift: float | None = None,
    flow_target: str = "velocity",
    max_sequence_length: int | None = None,
    gradient_checkpointing: bool = False,
    device: str | torch.device = "cpu",
    cache_dir: str | Path | None = None,
    seed: int = 0,
) -> TrainModel:
    """Load `generator` (registry name, e.g. `sdxl`, `tiny-sd15`) from `path` or its default source.

    `lora_rank=None` trains the full denoiser against a frozen copy; `lora_targets=None` takes the
    family's default (`LORA_TARGETS`). `vae` replaces the pipeline's VAE (a hub id or folder loaded
    with the same class). Frozen parts run in the mixed-precision dtype, the VAE as
    `vae_keeps_float32` says; trainable parameters stay float32 (accelerate autocasts the forward).
    """
    from pipeline.generators import load_pipeline
    from pipeline.models import default_cache_dir, generator_path, quiet_hf_progress

    quiet_hf_progress()
    spec = replace(resolve_spec(generator, path, pipeline_class), dtype="float32")
    folder = generator_path(spec, Path(cache_dir) if cache_dir else default_cache_dir())
    pipe = load_pipeline(spec, folder, device=str(device))
    if vae is not None:
        pipe.register_modules(vae=type(pipe.vae).from_pretrained(vae).to(str(device)))
    weight_dtype = _DTYPES[mixed_precision]
    family = spec.family
    denoiser = pipe.unet if family in ("sd15", "sdxl") else pipe.transformer

    for name, module in pipe.components.items():
        if isinstance(module, nn.Module):
            module.requires_grad_(False)
            module.eval()
            keep_fp32 = module is denoiser or (name == "vae" and vae_keeps_float32(family, module.config))
            if keep_fp32:
                module.to(dtype=torch.float32)
            elif weight_dtype != torch.float32:
                module.to(dtype=weight_dtype)

    if family in FLOW_FAMILIES:
        objective: Objective = _flow_objective(pipe, flow_weighting, flow_logit_mean, flow_logit_std, flow_shift, flow_target)
    else:
        objective = DiffusionObjective.from_scheduler_config(pipe.scheduler.config, prediction_type)

    frozen_reference = None
    if lora_rank is not None:
        from peft import LoraConfig

        if weight_dtype != torch.float32:
            denoiser.to(dtype=weight_dtype)  # frozen base in half precision, as the diffusers LoRA scripts do
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # LoRA A init is random: make it a function of the run's seed
        try:
            denoiser.add_adapter(LoraConfig(r=lora_rank, lora_alpha=lora_alpha or lora_rank, init_lora_weights="gaussian",
                                            target_modules=list(lora_targets or LORA_TARGETS[family])))
        finally:
            torch.random.set_rng_state(state)
        for p in denoiser.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    else:
        frozen_reference = copy.deepcopy(denoiser).requires_grad_(False).eval()
        if weight_dtype != torch.float32:
            frozen_reference.to(dtype=weight_dtype)
        denoiser.requires_grad_(True)
    if gradient_checkpointing:
        denoiser.enable_gradient_checkpointing()
    denoiser.train()
    msl = max_sequence_length if max_sequence_length is not None else sampling_sequence_length(spec, type(pipe))
    return TrainModel(family, pipe, denoiser, objective, lora_rank is not None, frozen_reference, msl,
                      weight_dtype=weight_dtype)
