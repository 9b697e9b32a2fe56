"""Training objectives: how a clean latent becomes a (noisy input, regression target) pair.

Diffusion-DPO compares the policy's and the reference's denoising errors on a winner and a loser.
The comparison only means something when both members of a pair see the *same* noise and the
*same* timestep, so `noise_pair` draws one noise tensor and one timestep per pair and applies them
to both. Winners come first, losers second, in one `(2B, ...)` batch (one denoiser call per model).

Two families:

* `DiffusionObjective` (SD1.5, SDXL): DDPM forward process from the model's own scheduler config,
  ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps``; target ``eps`` (epsilon prediction) or
  ``v = sqrt(a_t) eps - sqrt(1 - a_t) x0`` (v prediction); integer timesteps uniform in [0, T).
* `FlowObjective` (SD3, FLUX, Wan2.1): rectified flow, ``x_s = (1 - s) x0 + s eps``, target
  ``eps - x0``; ``s`` sampled as in diffusers' SD3/FLUX training scripts
  (`compute_density_for_timestep_sampling`: logit-normal, mode or uniform) and then shifted by the
  model's flow shift, ``s' = shift s / (1 + (shift - 1) s)`` (the schedulers' static shift). The
  denoiser is given ``s' * num_train_timesteps``.

Pure tensor code: no model, no device assumptions beyond the tensors given.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = ["DEFAULT_BETA_FLOW", "DiffusionObjective", "FlowObjective", "NoisedPair", "noise_pair", "shift_sigmas"]

#: Constant beta for rectified-flow models (SD3, FLUX, Wan): a heuristic, not a published value. For
#: unit-variance latents the flow target ``eps - x0`` has twice the variance of the epsilon target,
#: so squared-error differences are about twice as large; halving the epsilon reference value (5000)
#: keeps ``beta * error difference`` on the same scale. Tune it by watching ``reward_margin``.
DEFAULT_BETA_FLOW = 2500.0


@dataclass
class NoisedPair:
    """One training input for a batch of B pairs: winners in rows [0, B), losers in [B, 2B)."""

    noisy: Tensor  # (2B, ...) model input
    target: Tensor  # (2B, ...) regression target
    timesteps: Tensor  # (2B,) what the denoiser is given (integer steps or sigma * T)
    noise: Tensor  # (B, ...) the shared noise


@dataclass(frozen=True)
class DiffusionObjective:
    """Epsilon / v prediction on the DDPM schedule of the model's own scheduler config.

    The forward process is diffusers' `DDPMScheduler.add_noise` / `get_velocity` built from that
    config (beta schedule, number of train timesteps), whatever sampler the pipeline ships with.
    """

    scheduler: Any  # diffusers.DDPMScheduler
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"

    @classmethod
    def from_scheduler_config(cls, config: dict[str, Any], prediction_type: str | None = None) -> DiffusionObjective:
        from diffusers import DDPMScheduler

        sched = DDPMScheduler.from_config(dict(config))
        ptype = prediction_type or sched.config.prediction_type
        if ptype not in ("epsilon", "v_prediction"):
            raise ValueError(f"diffusion objective: prediction_type {ptype!r} not supported (epsilon, v_prediction)")
        return cls(sched, ptype)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    def sample_timesteps(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randint(0, self.num_train_timesteps, (batch,), generator=generator).long()

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        return self.scheduler.add_noise(x0, noise, t)

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        if self.prediction_type == "epsilon":
            return noise
        return self.scheduler.get_velocity(x0, noise, t)

    def model_timesteps(self, t: Tensor) -> Tensor:
        return t


def shift_sigmas(s: Tensor, shift: float) -> Tensor:
    """The schedulers' static time shift: ``shift * s / (1 + (shift - 1) * s)`` (identity at 1)."""
    return shift * s / (1 + (shift - 1) * s)


@dataclass(frozen=True)
class FlowObjective:
    """Rectified flow: ``x_s = (1 - s) x0 + s eps``, target ``eps - x0``."""

    weighting_scheme: Literal["logit_normal", "uniform", "mode"] = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    shift: float = 1.0
    num_train_timesteps: int = 1000

    def sample_timesteps(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        """Sigmas in (0, 1), sampled as the SD3/FLUX diffusers scripts do, then shifted."""
        from diffusers.training_utils import compute_density_for_timestep_sampling

        scheme = "none" if self.weighting_scheme == "uniform" else self.weighting_scheme
        u = compute_density_for_timestep_sampling(
            scheme, batch, logit_mean=self.logit_mean, logit_std=self.logit_std, mode_scale=self.mode_scale,
            generator=generator,
        )
        return shift_sigmas(u.double(), self.shift).float()

    @staticmethod
    def _view(s: Tensor, like: Tensor) -> Tensor:
        return s.to(like.device, like.dtype).view((-1,) + (1,) * (like.ndim - 1))

    def add_noise(self, x0: Tensor, noise: Tensor, s: Tensor) -> Tensor:
        s = self._view(s, x0)
        return (1 - s) * x0 + s * noise

    def target(self, x0: Tensor, noise: Tensor, s: Tensor) -> Tensor:
        return noise - x0

    def model_timesteps(self, s: Tensor) -> Tensor:
        return s * self.num_train_timesteps


Objective = DiffusionObjective | FlowObjective


def noise_pair(objective: Objective, x0_w: Tensor, x0_l: Tensor, generator: torch.Generator | None = None) -> NoisedPair:
    """Noise winners and losers with the same noise and timestep; return them stacked winners-first.

    Noise and timesteps are drawn on the CPU from `generator` (reproducible across devices and on
    resume) and moved to the latents' device.
    """
    if x0_w.shape != x0_l.shape:
        raise ValueError(f"noise_pair: winner and loser latents differ in shape: {tuple(x0_w.shape)} vs {tuple(x0_l.shape)}")
    b = x0_w.shape[0]
    noise = torch.randn(x0_w.shape, generator=generator, dtype=torch.float32).to(x0_w.device, x0_w.dtype)
    t = objective.sample_timesteps(b, generator=generator).to(x0_w.device)
    x0 = torch.cat([x0_w, x0_l])
    noise2, t2 = torch.cat([noise, noise]), torch.cat([t, t])
    return NoisedPair(
        noisy=objective.add_noise(x0, noise2, t2),
        target=objective.target(x0, noise2, t2),
        timesteps=objective.model_timesteps(t2),
        noise=noise,
    )
