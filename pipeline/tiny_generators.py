"""Toy-sized twins of the real generators, built offline from configs.

Each twin is the *same* diffusers pipeline class as its full-size model (StableDiffusionPipeline,
WanPipeline, ...) with random weights small enough that a CPU renders an image or a short clip in
well under a second. They exist so that tests and the demo exercise the real code path end to end:
`build_tiny(family).save_pretrained(dir)` then `load_pipeline(spec, dir)`, exactly as a hub id or a
local checkpoint is loaded. Their pixels are noise-like and mean nothing.

Tokenizers come from `reward_models.offline_tokenizers.clip_tokenizer()` (the real CLIP BPE, built
without network), so text encoders take its 49408-token vocabulary.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DiffusionPipeline

from reward_models.offline_tokenizers import clip_tokenizer

_CLIP_VOCAB = 49408
_BOS, _EOS = 49406, 49407  # CLIP's <|startoftext|> / <|endoftext|> ids


def _clip_text(hidden: int = 32, projection: int | None = None):
    """A 2-layer CLIP text tower on the real CLIP vocabulary (with a projection head for SDXL/SD3's 2nd)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=_CLIP_VOCAB, hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=_BOS, eos_token_id=_EOS,
        pad_token_id=_EOS, projection_dim=projection or hidden,
    )
    return CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)


def _t5_text(d_model: int = 32, umt5: bool = False):
    """A 2-layer T5 (or UMT5, Wan's class) encoder on the CLIP vocabulary."""
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    cls, cfg_cls = (UMT5EncoderModel, UMT5Config) if umt5 else (T5EncoderModel, T5Config)
    cfg = cfg_cls(vocab_size=_CLIP_VOCAB, d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                  relative_attention_num_buckets=8, pad_token_id=_EOS, eos_token_id=_EOS, decoder_start_token_id=_EOS)
    return cls(cfg)


def _vae(latent_channels: int, **config):
    """A two-level AutoencoderKL: one latent per 2x2 pixels (the real ones: 8x8)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=latent_channels, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=64,
        **config,
    )


def _sd15() -> DiffusionPipeline:
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=4,
    )
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(
        vae=_vae(4), text_encoder=_clip_text(), tokenizer=clip_tokenizer(), unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )


def _wan21() -> DiffusionPipeline:
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    )
    # The Wan2.1 Diffusers repos ship UniPC in flow mode; flow_shift 3.0 is diffusers' 480p value (docs/generators.md).
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    return WanPipeline(tokenizer=clip_tokenizer(), text_encoder=_t5_text(umt5=True), vae=vae,
                       scheduler=scheduler, transformer=transformer)


def _sdxl() -> DiffusionPipeline:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    # SDXL conditions on both towers' hidden states (32 + 32) and on the 2nd tower's pooled
    # projection plus six micro-conditioning numbers (crop, size): 6 * 8 + 32 inputs.
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=4,
    )
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1)
    return StableDiffusionXLPipeline(
        vae=_vae(4), text_encoder=_clip_text(), text_encoder_2=_clip_text(projection=32), tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(), unet=unet, scheduler=scheduler, image_encoder=None, feature_extractor=None,
    )


def _sd3() -> DiffusionPipeline:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    # Two CLIP towers (pooled 32 + 32 = 64) and a T5 whose width (64) is the joint attention width.
    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=32, pooled_projection_dim=64,
        pos_embed_max_size=32,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(16, shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=_clip_text(projection=32), tokenizer=clip_tokenizer(),
        text_encoder_2=_clip_text(projection=32), tokenizer_2=clip_tokenizer(),
        text_encoder_3=_t5_text(d_model=64), tokenizer_3=clip_tokenizer(),
    )


def _flux() -> DiffusionPipeline:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    # FLUX packs 2x2 latent patches into tokens: 4 latent channels -> 16 inputs. Guidance-distilled
    # like FLUX.1-dev (guidance_embeds), with dev's resolution-dependent shift.
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(
        transformer=transformer, scheduler=scheduler,
        vae=_vae(4, shift_factor=0.1159, scaling_factor=0.3611, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=_clip_text(), tokenizer=clip_tokenizer(), text_encoder_2=_t5_text(), tokenizer_2=clip_tokenizer(),
    )


_BUILDERS: dict[str, Callable[[], DiffusionPipeline]] = {
    "sd15": _sd15, "sdxl": _sdxl, "sd3": _sd3, "flux": _flux, "wan21": _wan21,
}
TINY_FAMILIES: tuple[str, ...] = tuple(_BUILDERS)


def build_tiny(family: str, seed: int = 0) -> DiffusionPipeline:
    """A random-weight toy pipeline of `family`; the same seed gives the same weights, bit for bit."""
    if family not in _BUILDERS:
        raise ValueError(f"no tiny twin for generator family {family!r}; tiny twins exist for {list(TINY_FAMILIES)}")
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        pipe = _BUILDERS[family]()
    finally:
        torch.random.set_rng_state(state)  # do not disturb the caller's global RNG
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()  # freshly built modules are in train mode: dropout would make outputs random
    pipe.set_progress_bar_config(disable=True)
    return pipe
