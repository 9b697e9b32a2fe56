"""Objectives: exact values against the direct formulas, and the DPO pairing (shared noise and timestep)."""
from __future__ import annotations

import math

import pytest
import torch

from trainer.objectives import (
    DEFAULT_BETA_FLOW,
    DiffusionObjective,
    FlowObjective,
    noise_pair,
    shift_sigmas,
)

# The SD1.5 / tiny-sd15 schedule: scaled_linear betas from 0.00085 to 0.012 over 1000 steps.
SD15 = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def _alpha_bar(t: int) -> float:
    b0, b1 = math.sqrt(0.00085), math.sqrt(0.012)
    prod = 1.0
    for i in range(t + 1):
        prod *= 1.0 - (b0 + (b1 - b0) * i / 999) ** 2
    return prod


@pytest.mark.parametrize("t", [0, 1, 500, 999])
def test_epsilon_and_v_match_direct_formulas(t):
    # diffusers computes the schedule in float32: agreement to float32 precision (~1e-6)
    eps_obj = DiffusionObjective.from_scheduler_config(SD15)
    v_obj = DiffusionObjective.from_scheduler_config(SD15, prediction_type="v_prediction")
    x0 = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    noise = torch.tensor([[2.0, 0.25]], dtype=torch.float64)
    ts = torch.tensor([t])
    a = _alpha_bar(t)
    want_xt = torch.tensor([[math.sqrt(a) * 0.5 + math.sqrt(1 - a) * 2.0, -math.sqrt(a) + math.sqrt(1 - a) * 0.25]], dtype=torch.float64)
    want_v = torch.tensor([[math.sqrt(a) * 2.0 - math.sqrt(1 - a) * 0.5, math.sqrt(a) * 0.25 + math.sqrt(1 - a)]], dtype=torch.float64)
    torch.testing.assert_close(eps_obj.add_noise(x0, noise, ts), want_xt, rtol=1e-6, atol=1e-6)
    assert torch.equal(eps_obj.target(x0, noise, ts), noise)
    torch.testing.assert_close(v_obj.target(x0, noise, ts), want_v, rtol=1e-6, atol=1e-6)
    assert eps_obj.model_timesteps(ts).tolist() == [t]


def test_t0_value_by_hand():
    # alpha_bar_0 = 1 - 0.00085 exactly, so x_0 = sqrt(0.99915) * 1 + sqrt(0.00085) * 2
    obj = DiffusionObjective.from_scheduler_config(SD15)
    xt = obj.add_noise(torch.ones(1, 1, dtype=torch.float64), torch.full((1, 1), 2.0, dtype=torch.float64), torch.tensor([0]))
    assert xt.item() == pytest.approx(math.sqrt(0.99915) + 2 * math.sqrt(0.00085), rel=1e-6)  # diffusers keeps the schedule in float32


def test_diffusion_objective_refuses_unknown_prediction_type():
    with pytest.raises(ValueError, match="sample"):
        DiffusionObjective.from_scheduler_config({**SD15, "prediction_type": "sample"})


# Published scheduler configs (the hub repos' scheduler/scheduler_config.json), written here as facts.
SD35_MEDIUM = {"num_train_timesteps": 1000, "shift": 3.0}  # stabilityai/stable-diffusion-3.5-medium
FLUX1_DEV = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5,
             "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}  # black-forest-labs/FLUX.1-dev
# Wan-AI/Wan2.1-T2V-1.3B-Diffusers ships UniPC in flow mode (diffusers docs/source/en/api/pipelines/wan.md)
WAN21_1_3B = {"num_train_timesteps": 1000, "prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": 3.0}


def _script_sigmas(config, batch, generator, weighting_scheme="logit_normal", logit_mean=0.0, logit_std=1.0, mode_scale=1.29):
    """diffusers examples/dreambooth/train_dreambooth_lora_sd3.py (and _flux.py), transcribed:
    noise_scheduler_copy, compute_density_for_timestep_sampling, indices, timesteps, get_sigmas."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.training_utils import compute_density_for_timestep_sampling

    noise_scheduler_copy = FlowMatchEulerDiscreteScheduler.from_config(config)
    u = compute_density_for_timestep_sampling(weighting_scheme=weighting_scheme, batch_size=batch, logit_mean=logit_mean,
                                              logit_std=logit_std, mode_scale=mode_scale, generator=generator)
    indices = (u * noise_scheduler_copy.config.num_train_timesteps).long()
    timesteps = noise_scheduler_copy.timesteps[indices]
    schedule_timesteps = noise_scheduler_copy.timesteps
    step_indices = [(schedule_timesteps == t).nonzero().item() for t in timesteps]
    return noise_scheduler_copy.sigmas[step_indices].flatten(), timesteps


def test_flow_interpolation_target_and_timesteps():
    obj = FlowObjective(weighting_scheme="uniform")
    x0, noise = torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0, 0.5]])
    s = torch.tensor([0.25])
    assert obj.add_noise(x0, noise, s).tolist() == [[0.75 * 1.0 + 0.25 * 3.0, 0.75 * -2.0 + 0.25 * 0.5]]
    assert obj.target(x0, noise, s).tolist() == [[2.0, 2.5]]
    assert obj.model_timesteps(s).tolist() == [250.0]


def test_shift_sigmas_exact():
    s = torch.tensor([0.0, 0.5, 1.0, 0.25], dtype=torch.float64)
    assert shift_sigmas(s, 3.0).tolist() == [0.0, 0.75, 1.0, 0.75 / 1.5]
    assert torch.equal(shift_sigmas(s, 1.0), s)


@pytest.mark.parametrize("config", [SD35_MEDIUM, FLUX1_DEV], ids=["sd35-medium", "flux1-dev"])
@pytest.mark.parametrize("scheme", [
    {"weighting_scheme": "logit_normal"},
    {"weighting_scheme": "logit_normal", "logit_mean": 0.5, "logit_std": 0.7},
    {"weighting_scheme": "mode"},
    {"weighting_scheme": "uniform"},
])
def test_flow_sampling_is_the_diffusers_scripts_rule(config, scheme):
    # the same generator state: vipo's sigmas and timesteps equal the scripts', bit for bit
    kw = {k: v for k, v in scheme.items() if k != "weighting_scheme"}
    obj = FlowObjective.from_scheduler_config(config, weighting_scheme=scheme["weighting_scheme"], **kw)
    got = obj.sample_timesteps(4000, generator=torch.Generator().manual_seed(11))
    script_scheme = "none" if scheme["weighting_scheme"] == "uniform" else scheme["weighting_scheme"]
    want, want_t = _script_sigmas(config, 4000, torch.Generator().manual_seed(11), script_scheme, **kw)
    assert torch.equal(got, want)
    assert torch.equal(obj.model_timesteps(got), want_t)


def _logit_normal_mean(f, mean: float, std: float, n: int = 20001) -> float:
    """E[f(sigmoid(z))], z ~ N(mean, std), by the trapezoid rule over +-8 std (independent of torch)."""
    lo, hi = mean - 8 * std, mean + 8 * std
    h = (hi - lo) / (n - 1)
    total = 0.0
    for i in range(n):
        z = lo + i * h
        w = 0.5 if i in (0, n - 1) else 1.0
        total += w * f(1 / (1 + math.exp(-z))) * math.exp(-0.5 * ((z - mean) / std) ** 2)
    return total * h / (std * math.sqrt(2 * math.pi))


def test_flow_mean_sigma_against_the_published_configs():
    g = torch.Generator().manual_seed(0)
    # FLUX.1-dev: dynamic shifting, so the training table is unshifted and sigma = 1 - floor(1000 u) / 1000:
    # mean 0.5005 for logit-normal(0, 1); the static shift 3 of its config would make it 0.713
    flux = FlowObjective.from_scheduler_config(FLUX1_DEV).sample_timesteps(200_000, generator=g)
    assert abs(flux.mean().item() - 0.5005) < 0.01
    # SD3.5: static shift 3 of 1 - u; logit mean 0.5 means *less* noise in the scripts (0.62, not 0.79)
    want = _logit_normal_mean(lambda u: 3 * (1 - u) / (1 + 2 * (1 - u)), 0.5, 1.0)
    assert abs(want - 0.62) < 0.01
    sd3 = FlowObjective.from_scheduler_config(SD35_MEDIUM, logit_mean=0.5).sample_timesteps(200_000, generator=g)
    assert abs(sd3.mean().item() - want) < 0.01


def test_sigma_tables_of_wan_and_of_a_shift_override():
    i = torch.arange(1000, dtype=torch.float64)
    unshifted = (1000 - i) / 1000
    wan = FlowObjective.from_scheduler_config(WAN21_1_3B)
    torch.testing.assert_close(wan.sigmas.double(), 3 * unshifted / (1 + 2 * unshifted), rtol=0, atol=1e-6)
    over = FlowObjective.from_scheduler_config(FLUX1_DEV, shift=2.0)  # objective.flow_shift replaces the dynamic rule
    torch.testing.assert_close(over.sigmas.double(), 2 * unshifted / (1 + unshifted), rtol=0, atol=1e-6)
    flux = FlowObjective.from_scheduler_config(FLUX1_DEV)
    torch.testing.assert_close(flux.sigmas.double(), unshifted, rtol=0, atol=1e-7)


def test_u_at_one_is_clamped_to_the_last_sigma(monkeypatch):
    import diffusers.training_utils as tu

    monkeypatch.setattr(tu, "compute_density_for_timestep_sampling", lambda *a, **k: torch.tensor([0.0, 0.9995, 1.0]))
    s = FlowObjective.from_scheduler_config(SD35_MEDIUM).sample_timesteps(3)
    assert s[0].item() == 1.0 and s[1].item() == s[2].item() == pytest.approx(3 * 0.001 / (1 + 2 * 0.001), abs=1e-7)


def test_x0_target_is_the_sd3_scripts_preconditioning():
    # train_dreambooth_lora_sd3.py --precondition_outputs 1: model_pred = model_pred * (-sigmas) + noisy_model_input,
    # target = model_input
    g = torch.Generator().manual_seed(3)
    x0, noise, out = (torch.randn(4, 16, 4, 4, generator=g) for _ in range(3))
    velocity = FlowObjective.from_scheduler_config(SD35_MEDIUM)
    x0_obj = FlowObjective.from_scheduler_config(SD35_MEDIUM, target_space="x0")
    sigmas = x0_obj.sample_timesteps(4, generator=g)
    sig = sigmas.view(-1, 1, 1, 1)
    noisy_model_input = (1.0 - sig) * x0 + sig * noise
    torch.testing.assert_close(x0_obj.add_noise(x0, noise, sigmas), noisy_model_input, rtol=0, atol=0)
    assert torch.equal(x0_obj.target(x0, noise, sigmas), x0)
    assert torch.equal(x0_obj.prediction(out, noisy_model_input, sigmas), out * (-sig) + noisy_model_input)
    assert torch.equal(velocity.prediction(out, noisy_model_input, sigmas), out)
    # the two errors differ by sigma^2 per sample: (x_s - s v - x0) = s ((eps - x0) - v)
    from trainer.losses import per_sample_error

    e_x0 = per_sample_error(x0_obj.prediction(out, noisy_model_input, sigmas), x0)
    e_v = per_sample_error(out, velocity.target(x0, noise, sigmas))
    torch.testing.assert_close(e_x0, sigmas.double().square().float() * e_v, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="target 'eps'"):
        FlowObjective(target_space="eps")


@pytest.mark.parametrize("objective", [DiffusionObjective.from_scheduler_config(SD15), FlowObjective()])
def test_winner_and_loser_share_noise_and_timestep(objective):
    x_w, x_l = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    pair = noise_pair(objective, x_w, x_l, torch.Generator().manual_seed(0))
    assert pair.noisy.shape == pair.target.shape == (6, 4, 8, 8)
    assert torch.equal(pair.timesteps[:3], pair.timesteps[3:])
    t = pair.t[:3]
    assert torch.equal(pair.timesteps[:3], objective.model_timesteps(t))
    torch.testing.assert_close(pair.noisy[:3], objective.add_noise(x_w, pair.noise, t))
    torch.testing.assert_close(pair.noisy[3:], objective.add_noise(x_l, pair.noise, t))
    torch.testing.assert_close(pair.target[3:], objective.target(x_l, pair.noise, t))
    again = noise_pair(objective, x_w, x_l, torch.Generator().manual_seed(0))
    assert torch.equal(again.noisy, pair.noisy)  # a pure function of the generator (resume-exact)


def test_video_latents_and_shape_mismatch():
    pair = noise_pair(FlowObjective(), torch.zeros(2, 16, 3, 4, 4), torch.ones(2, 16, 3, 4, 4))
    assert pair.noisy.shape == (4, 16, 3, 4, 4)
    with pytest.raises(ValueError, match="differ in shape"):
        noise_pair(FlowObjective(), torch.zeros(2, 4, 8, 8), torch.zeros(2, 4, 8, 6))


def test_flow_beta_default_is_half_the_epsilon_reference():
    from trainer.losses import DEFAULT_BETA_EPSILON

    assert DEFAULT_BETA_FLOW == DEFAULT_BETA_EPSILON / 2
