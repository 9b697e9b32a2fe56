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
    assert type(sd3.objective).__name__ == "FlowObjective" and sd3.objective.shift == 3.0  # the scheduler's shift
    with pytest.raises(ValueError, match="video pixels"):
        sd3.encode_pixels(torch.zeros(1, 3, 5, 16, 16))
    wan = load_train_model("tiny-wan21", lora_rank=2, cache_dir=vipo_cache)
    assert wan.objective.shift == 3.0  # UniPC's flow_shift
    with pytest.raises(ValueError, match=r"\(frames - 1\) % 4"):
        wan.encode_pixels(torch.zeros(1, 3, 4, 16, 16))


def test_unknown_generator_is_refused(vipo_cache):
    with pytest.raises(ValueError, match="not in the registry"):
        load_train_model("no-such-model", cache_dir=vipo_cache)
