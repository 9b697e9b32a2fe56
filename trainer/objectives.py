"""Training objectives: how a clean latent becomes a (noisy input, regression target) pair.

Diffusion-DPO compares the policy's and the reference's denoising errors on a winner and a loser.
The comparison only means something when both members of a pair see the *same* noise and the
*same* timestep, so `noise_pair` draws one noise tensor and one timestep per pair and applies them
to both. Winners come first, losers second, in one `(2B, ...)` batch (one denoiser call per model).

Two families:

* `DiffusionObjective` (SD1.5, SDXL): DDPM forward process from the model's own scheduler config,
  ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps``; target ``eps`` (epsilon prediction) or
  ``v = sqrt(a_t) eps - sqrt(1 - a_t) x0`` (v prediction); integer timesteps uniform in [0, T).
* `FlowObjective` (SD3, FLUX, Wan2.1): rectified flow, ``x_s = (1 - s) x0 + s eps``. The sigma is
  drawn exactly as diffusers' `train_dreambooth_lora_sd3.py` / `_flux.py` draw it: ``u`` from
  `compute_density_for_timestep_sampling`, ``index = (u * T).long()``, ``s = scheduler.sigmas[index]``
  of the model's own `FlowMatchEulerDiscreteScheduler` table (descending, so ``s ~ 1 - u``; the
  static shift is in the table unless the config uses dynamic, resolution-dependent shifting, as
  FLUX.1-dev's does). The denoiser is given ``scheduler.timesteps[index] = s * T``. Target
  ``eps - x0`` (velocity, the default) or, with ``target="x0"``, the SD3 script's
  ``--precondition_outputs 1`` form: prediction ``-s * out + x_s`` against ``x0``.

Pure tensor code: no model, no device assumptions beyond the tensors given.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_BETA_FLOW", "DiffusionObjective", "FlowObjective", "FlowTarget", "NoisedPair", "flow_sigma_table", "noise_pair",
    "shift_sigmas",
]

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
    t: Tensor  # (2B,) the objective's own time: integer step or sigma

    def prediction(self, objective: Objective, out: Tensor) -> Tensor:
        """The denoiser output `out` of this input, in the space of `target`."""
        return objective.prediction(out, self.noisy, self.t)


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

    def prediction(self, out: Tensor, noisy: Tensor, t: Tensor) -> Tensor:
        """The denoiser's output in target space (epsilon / v: the output itself)."""
        return out


def shift_sigmas(s: Tensor, shift: float) -> Tensor:
    """The schedulers' static time shift: ``shift * s / (1 + (shift - 1) * s)`` (identity at 1)."""
    return shift * s / (1 + (shift - 1) * s)


FlowTarget = Literal["velocity", "x0"]


def flow_sigma_table(scheduler_config: dict[str, Any], shift: float | None = None) -> Tensor:
    """The training sigmas, index 0 (noisiest) to T - 1, as the diffusers flow scripts read them.

    A `FlowMatchEulerDiscreteScheduler` config (SD3, FLUX) builds that scheduler and takes its
    `sigmas`: statically shifted, unless `use_dynamic_shifting` (FLUX.1-dev), where the scheduler
    leaves them unshifted. A config with a `flow_shift` (Wan's UniPC in flow mode) gets the same
    table with that static shift. `shift` (the config's `objective.flow_shift`) replaces both.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    cfg = dict(scheduler_config)
    n = int(cfg.get("num_train_timesteps", 1000))
    if "flow_shift" not in cfg:
        over = {} if shift is None else {"shift": shift, "use_dynamic_shifting": False}
        sched = FlowMatchEulerDiscreteScheduler.from_config(cfg, **over)
    else:
        static = shift if shift is not None else float(cfg.get("flow_shift") or 1.0)
        sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=n, shift=static)
    return sched.sigmas[:n].clone()


@dataclass(frozen=True, eq=False)
class FlowObjective:
    """Rectified flow: ``x_s = (1 - s) x0 + s eps``, target ``eps - x0`` (or ``x0``, preconditioned)."""

    weighting_scheme: Literal["logit_normal", "uniform", "mode"] = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    sigmas: Tensor | None = None  # the scheduler's table (flow_sigma_table); None: unshifted 1 - i / T
    num_train_timesteps: int = 1000
    target_space: FlowTarget = "velocity"

    def __post_init__(self) -> None:
        if self.sigmas is None:
            object.__setattr__(self, "sigmas", flow_sigma_table({"num_train_timesteps": self.num_train_timesteps}))
        if self.sigmas.shape != (self.num_train_timesteps,):
            raise ValueError(f"flow objective: {tuple(self.sigmas.shape)} sigmas for {self.num_train_timesteps} timesteps")
        if self.target_space not in ("velocity", "x0"):
            raise ValueError(f"flow objective: target {self.target_space!r}; expected 'velocity' or 'x0'")

    @classmethod
    def from_scheduler_config(cls, config: dict[str, Any], *, shift: float | None = None, **kw: Any) -> FlowObjective:
        table = flow_sigma_table(config, shift)
        return cls(sigmas=table, num_train_timesteps=int(table.shape[0]), **kw)

    def sample_timesteps(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        """Sigmas drawn as the SD3/FLUX diffusers scripts draw them: ``sigmas[(u * T).long()]``.

        ``u`` in [0, 1] can reach 1 (float rounding of the logit-normal, ``mode`` at u = 0), where the
        scripts' index would be T: it is clamped to the last entry.
        """
        from diffusers.training_utils import compute_density_for_timestep_sampling

        scheme = "none" if self.weighting_scheme == "uniform" else self.weighting_scheme
        u = compute_density_for_timestep_sampling(
            scheme, batch, logit_mean=self.logit_mean, logit_std=self.logit_std, mode_scale=self.mode_scale,
            generator=generator,
        )
        index = (u * self.num_train_timesteps).long().clamp_(0, self.num_train_timesteps - 1)
        return self.sigmas[index]

    @staticmethod
    def _view(s: Tensor, like: Tensor) -> Tensor:
        return s.to(like.device, like.dtype).view((-1,) + (1,) * (like.ndim - 1))

    def add_noise(self, x0: Tensor, noise: Tensor, s: Tensor) -> Tensor:
        s = self._view(s, x0)
        return (1 - s) * x0 + s * noise

    def target(self, x0: Tensor, noise: Tensor, s: Tensor) -> Tensor:
        return x0 if self.target_space == "x0" else noise - x0

    def model_timesteps(self, s: Tensor) -> Tensor:
        return s * self.num_train_timesteps

    def prediction(self, out: Tensor, noisy: Tensor, s: Tensor) -> Tensor:
        """The denoiser's output in target space: itself, or ``-s * out + x_s`` (EDM preconditioning, x0)."""
        if self.target_space == "velocity":
            return out
        return out * (-self._view(s, out)) + noisy


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
        t=t2,
    )
