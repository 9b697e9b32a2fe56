"""Trainer models: the LoRA-disabled reference equals the policy at init, stays put while the policy
moves; the full fine-tune keeps a frozen copy; every family runs its denoiser on shared-noise pairs."""
from __future__ import annotations

import pytest
import torch

from trainer.batch import PairBatch
from trainer.loop import step_generator, train_step
from trainer.losses import per_sample_error
from trainer.models import load_train_model
from trainer.objectives import noise_pair


def _batch(shape, seed=0) -> PairBatch:
    g = torch.Generator().manual_seed(seed)
    b = shape[0]
    return PairBatch(torch.rand(shape, generator=g) * 2 - 1, torch.rand(shape, generator=g) * 2 - 1,
                     ["a red apple"] * b, ["aesthetics"] * b, [f"{i:016x}" for i in range(b)])


def _predictions(model, batch, seed=0):
    g = step_generator(seed, 0, 0, 0)
    h, w = batch.pixels_w.shape[-2:]
    lw, ll = model.encode_pixels(batch.pixels_w, g), model.encode_pixels(batch.pixels_l, g)
    cond = model.encode_prompts(batch.prompts, h, w)
    pair = noise_pair(model.objective, lw, ll, g)
    with torch.no_grad():
        policy = model.predict(model.denoiser, pair.noisy, pair.timesteps, cond)
        with model.reference() as ref:
            reference = model.predict(ref, pair.noisy, pair.timesteps, cond)
    return policy, reference, pair


def _one_step(model, batch, lr=1e-2):
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=lr)
    loss, _ = train_step(model, model.denoiser, batch, step_generator(1, 0, 0, 0), beta=5000.0, alpha=0.5)
    loss.backward()
    opt.step()


def test_lora_reference_is_the_policy_with_adapters_off(vipo_cache):
    model = load_train_model("tiny-sd15", lora_rank=4, cache_dir=vipo_cache)
    assert model.lora and model.frozen_reference is None
    lora_b = [p for n, p in model.denoiser.named_parameters() if "lora_B" in n]
    assert lora_b and all(torch.count_nonzero(p) == 0 for p in lora_b)  # fresh LoRA: B = 0
    trainable = {n for n, p in model.denoiser.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    batch = _batch((2, 3, 16, 16))
    policy, reference, _ = _predictions(model, batch)
    assert torch.equal(policy, reference)  # exactly, not approximately

    _one_step(model, batch)
    policy2, reference2, _ = _predictions(model, batch)
    assert not torch.equal(policy2, reference2)
    assert torch.equal(reference2, reference)  # training did not move the reference
    # adapters are back on and trainable after the reference pass
    assert {n for n, p in model.denoiser.named_parameters() if p.requires_grad} == trainable


def test_full_finetune_keeps_a_frozen_copy(vipo_cache):
    model = load_train_model("tiny-sd15", lora_rank=None, cache_dir=vipo_cache)
    assert not model.lora and model.frozen_reference is not model.denoiser
    assert not any(p.requires_grad for p in model.frozen_reference.parameters())
    assert all(p.requires_grad for p in model.denoiser.parameters())
    batch = _batch((2, 3, 16, 16))
    policy, reference, _ = _predictions(model, batch)
    torch.testing.assert_close(policy, reference, rtol=0, atol=1e-5)  # a copy: same maths, kernels may differ in the last bit
    _one_step(model, batch, lr=1e-3)
    policy2, reference2, _ = _predictions(model, batch)
    assert not torch.equal(policy2, reference2) and torch.equal(reference2, reference)


@pytest.mark.parametrize(
    "generator, shape, latent",
    [
        ("tiny-sdxl", (2, 3, 16, 16), (4, 4, 8, 8)),
        ("tiny-sd3", (2, 3, 16, 16), (4, 16, 8, 8)),
        ("tiny-flux", (2, 3, 16, 16), (4, 4, 8, 8)),
        ("tiny-wan21", (2, 3, 5, 16, 16), (4, 16, 2, 2, 2)),
    ],
)
def test_every_family_predicts_on_shared_noise_pairs(vipo_cache, generator, shape, latent):
    model = load_train_model(generator, lora_rank=2, max_sequence_length=8, cache_dir=vipo_cache)
    policy, reference, pair = _predictions(model, _batch(shape))
    assert policy.shape == pair.target.shape == latent
    assert torch.equal(policy, reference)
    assert torch.isfinite(per_sample_error(policy, pair.target)).all()


def test_family_objectives_and_input_checks(vipo_cache):
    sd3 = load_train_model("tiny-sd3", lora_rank=2, cache_dir=vipo_cache)
    # the scheduler's own table: sigma[i] = shift(1 - i / 1000) with shift 3, so sigma[500] = 0.75
    assert type(sd3.objective).__name__ == "FlowObjective" and sd3.objective.sigmas[500].item() == pytest.approx(0.75)
    with pytest.raises(ValueError, match="video pixels"):
        sd3.encode_pixels(torch.zeros(1, 3, 5, 16, 16))
    wan = load_train_model("tiny-wan21", lora_rank=2, cache_dir=vipo_cache)
    assert wan.objective.sigmas[500].item() == pytest.approx(0.75)  # UniPC's flow_shift 3
    with pytest.raises(ValueError, match=r"\(frames - 1\) % 4"):
        wan.encode_pixels(torch.zeros(1, 3, 4, 16, 16))


def test_flux_dev_scheduler_config_gives_the_flux_scripts_sigmas(tmp_path, vipo_cache):
    # black-forest-labs/FLUX.1-dev scheduler/scheduler_config.json: shift 3.0 with use_dynamic_shifting, where
    # diffusers does not apply the static shift; train_dreambooth_lora_flux.py's mean sigma is then 0.501
    from diffusers import FlowMatchEulerDiscreteScheduler

    from pipeline.tiny_generators import build_tiny

    pipe = build_tiny("flux", seed=0)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096)
    pipe.save_pretrained(tmp_path / "flux-dev-like")
    model = load_train_model("tiny-flux", path=str(tmp_path / "flux-dev-like"), lora_rank=2, cache_dir=vipo_cache)
    sigmas = model.objective.sample_timesteps(100_000, generator=torch.Generator().manual_seed(0))
    assert abs(sigmas.mean().item() - 0.501) < 0.01  # vipo's old static shift gave 0.713


# The reference scripts' default LoRA target lists, transcribed.
SD3_SCRIPT_TARGETS = ["attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
                      "attn.to_k", "attn.to_out.0", "attn.to_q", "attn.to_v"]  # train_dreambooth_lora_sd3.py
FLUX_SCRIPT_TARGETS = ["attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.add_k_proj", "attn.add_q_proj",
                       "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                       "ff_context.net.2"]  # train_dreambooth_lora_flux.py
# DiffSynth-Studio's Wan default "q,k,v,o,ffn.0,ffn.2" (Wan's names) in diffusers' WanTransformer3DModel names
WAN_DIFFSYNTH_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]
DPO_SCRIPT_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]  # train_diffusion_dpo_sdxl.py


@pytest.mark.parametrize("generator, targets", [
    ("tiny-sd3", SD3_SCRIPT_TARGETS), ("tiny-flux", FLUX_SCRIPT_TARGETS),
    ("tiny-wan21", WAN_DIFFSYNTH_TARGETS), ("tiny-sdxl", DPO_SCRIPT_TARGETS),
])
def test_lora_targets_are_the_reference_scripts(vipo_cache, generator, targets):
    model = load_train_model(generator, lora_rank=2, cache_dir=vipo_cache)
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in model.denoiser.named_modules() if n.endswith(".lora_A")}
    base = {n.replace(".base_layer", "") for n, m in model.denoiser.named_modules()
            if isinstance(m, torch.nn.Linear) and "lora_" not in n}
    # peft's rule: a module is a target when its name is, or ends with ".", one of the entries
    want = {n for n in base if any(n == t or n.endswith("." + t) for t in targets)}
    assert adapted == want
    assert all(any(n.endswith("." + t) for n in adapted) for t in targets)  # every entry exists in the model


def test_text_length_is_what_the_generator_samples_with(vipo_cache):
    import diffusers

    from pipeline.generators import REGISTRY
    from trainer.models import sampling_sequence_length

    # diffusers 0.42 __call__ defaults: SD3 256, FLUX 512, Wan 512; the registry's flux-schnell 256
    want = {"sd35-medium": 256, "flux-dev": 512, "flux-schnell": 256, "wan21-1.3b": 512, "wan21-14b": 512}
    for name, tokens in want.items():
        spec = REGISTRY[name]
        assert sampling_sequence_length(spec, getattr(diffusers, spec.pipeline_class)) == tokens, name
    wan = load_train_model("tiny-wan21", lora_rank=2, cache_dir=vipo_cache)
    assert wan.max_sequence_length == 32  # tiny-wan21 samples with 32
    assert wan.encode_prompts(["a cat"], 16, 16)["encoder_hidden_states"].shape[1] == 32


def test_sdxl_time_ids_are_per_pair_as_the_dpo_script_builds_them(vipo_cache):
    model = load_train_model("tiny-sdxl", lora_rank=2, cache_dir=vipo_cache)
    sizes, crops = [(100, 60), (48, 32)], [(3, 7), (0, 4)]
    ids = model.encode_prompts(["a", "b"], 16, 16, sizes, crops)["added_cond_kwargs"]["time_ids"]
    # train_diffusion_dpo_sdxl.py: add_time_ids = list(original_size + crops_coords_top_left + target_size), .repeat(2, 1)
    script = torch.tensor([list(s + c + (16, 16)) for s, c in zip(sizes, crops)], dtype=ids.dtype).repeat(2, 1)
    assert torch.equal(ids, script)
    native = model.encode_prompts(["a"], 16, 16)["added_cond_kwargs"]["time_ids"]
    assert native.tolist() == [[16, 16, 0, 0, 16, 16]] * 2


def test_vae_precision_follows_each_reference(tmp_path, vipo_cache):
    from pipeline.tiny_generators import build_tiny

    sdxl = load_train_model("tiny-sdxl", lora_rank=2, mixed_precision="bf16", cache_dir=vipo_cache)
    assert sdxl.pipe.vae.dtype == torch.float32 and sdxl.pipe.text_encoder.dtype == torch.bfloat16  # stock: force_upcast
    vae = build_tiny("sdxl", seed=0).vae
    vae.register_to_config(force_upcast=False)  # what an fp16-safe VAE (madebyollin/sdxl-vae-fp16-fix) declares
    vae.save_pretrained(tmp_path / "fp16-fix")
    fixed = load_train_model("tiny-sdxl", vae=str(tmp_path / "fp16-fix"), lora_rank=2, mixed_precision="bf16",
                             cache_dir=vipo_cache)
    assert fixed.pipe.vae.dtype == torch.bfloat16 and fixed.pipe.vae.config.force_upcast is False
    assert load_train_model("tiny-sd3", lora_rank=2, mixed_precision="bf16", cache_dir=vipo_cache).pipe.vae.dtype == torch.float32
    assert load_train_model("tiny-sd15", lora_rank=2, mixed_precision="bf16", cache_dir=vipo_cache).pipe.vae.dtype == torch.bfloat16


def test_unknown_generator_is_refused(vipo_cache):
    with pytest.raises(ValueError, match="not in the registry"):
        load_train_model("no-such-model", cache_dir=vipo_cache)
