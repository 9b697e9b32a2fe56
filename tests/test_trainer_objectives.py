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


def test_flow_sampling_matches_the_sd3_script_density():
    # logit-normal: sigmoid(N(mean, std)) drawn from the same generator, then the static shift
    obj = FlowObjective("logit_normal", logit_mean=0.3, logit_std=0.7, shift=3.0)
    got = obj.sample_timesteps(6, generator=torch.Generator().manual_seed(7))
    u = torch.sigmoid(torch.normal(0.3, 0.7, size=(6,), generator=torch.Generator().manual_seed(7)))
    torch.testing.assert_close(got, (3 * u / (1 + 2 * u)).float())
    uni = FlowObjective("uniform").sample_timesteps(5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(uni, torch.rand(5, generator=torch.Generator().manual_seed(1)))
    assert ((got > 0) & (got < 1)).all()


@pytest.mark.parametrize("objective", [DiffusionObjective.from_scheduler_config(SD15), FlowObjective()])
def test_winner_and_loser_share_noise_and_timestep(objective):
    x_w, x_l = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    pair = noise_pair(objective, x_w, x_l, torch.Generator().manual_seed(0))
    assert pair.noisy.shape == pair.target.shape == (6, 4, 8, 8)
    assert torch.equal(pair.timesteps[:3], pair.timesteps[3:])
    t = pair.timesteps[:3] if isinstance(objective, DiffusionObjective) else pair.timesteps[:3] / 1000
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
