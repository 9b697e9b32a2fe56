"""Poly-DPO losses for diffusion / flow models (the contract: docs/poly_dpo.md).

Diffusion-DPO (Wallace et al., 2023) turns a preference pair into a logistic loss on how much more
the policy improved the winner's denoising error than the loser's, relative to a frozen reference:

    inside = -0.5 * beta * ((err_w - err_l) - (ref_err_w - ref_err_l))
    p      = sigmoid(inside)                       # model's implied P(winner preferred)
    loss   = mean( -logsigmoid(inside) + alpha * (1 - p) )

The second term is the Poly-DPO confidence term (the first polynomial correction of the logistic
loss, as in PolyLoss). Its gradient w.r.t. ``inside`` is ``-(1 - p) * (1 + alpha * p)``:

* ``alpha = 0`` is plain Diffusion-DPO.
* ``alpha > 0`` adds weight ``alpha * p * (1 - p)``, which peaks at p = 0.5: the push is harder on
  pairs the model is unsure of. The paper uses it for noisy preference data, where the logistic
  loss alone lets a few confidently-wrong (mislabelled) pairs dominate.
* ``alpha < 0`` damps pairs the model already gets right (p -> 1), so trivially easy pairs stop
  pulling the model further (over-optimisation). For ``alpha < -1`` the factor ``1 + alpha * p``
  turns negative once ``p > -1/alpha``: the loss then pushes confident pairs *back*; keep
  ``alpha >= -1`` unless that is what you want.

Everything here is pure tensor code (no model, no device assumptions) so the trainer and the tests
share it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DEFAULT_BETA_EPSILON", "per_sample_error", "poly_dpo_loss", "sft_loss"]

#: beta of the Diffusion-DPO reference implementation for SD1.5-class epsilon-prediction models.
DEFAULT_BETA_EPSILON = 5000.0


def _accum_dtype(dtype: torch.dtype) -> torch.dtype:
    """At least float32: bf16/fp16 squared errors and logsigmoids lose too much precision."""
    return torch.promote_types(dtype, torch.float32)


def per_sample_error(pred: Tensor, target: Tensor) -> Tensor:
    """Per-sample denoising error: mean over all non-batch dims of ``(pred - target) ** 2``.

    ``pred`` and ``target`` must have the same shape ``(B, ...)``; broadcasting is refused because a
    silently broadcast target (e.g. ``(B, C, H, W)`` against ``(C, H, W)``) gives a plausible but
    wrong loss. The difference is taken and accumulated in at least float32 even for bf16/fp16 inputs
    (DPO looks at *differences* of errors that are often far below bf16's resolution). Returns a 1-D
    tensor of shape ``(B,)`` in that accumulation dtype, differentiable w.r.t. both inputs.
    """
    if not isinstance(pred, Tensor) or not isinstance(target, Tensor):
        raise TypeError(f"per_sample_error expects tensors, got {type(pred).__name__} and {type(target).__name__}")
    if pred.shape != target.shape:
        raise ValueError(
            f"per_sample_error: pred and target must have the same shape, got {tuple(pred.shape)} and "
            f"{tuple(target.shape)} (no broadcasting)"
        )
    if pred.ndim < 1:
        raise ValueError("per_sample_error: inputs need a batch dimension, got a 0-d tensor")
    dtype = _accum_dtype(torch.promote_types(pred.dtype, target.dtype))
    sq = (pred.to(dtype) - target.to(dtype)).square()
    if sq.ndim == 1:
        return sq
    return sq.flatten(1).mean(dim=1)


def _check_errors(caller: str, unit: str, **errs: Tensor) -> int:
    """Validate per-sample error vectors (tensors, 1-D, one batch size, non-empty); return the batch size."""
    names = list(errs)
    for name, t in errs.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{caller}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 1:
            raise ValueError(
                f"{caller}: {name} must be 1-D (one error per {unit}, shape (B,)), got shape "
                f"{tuple(t.shape)}; reduce with per_sample_error first"
            )
    sizes = {name: t.shape[0] for name, t in errs.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(
            f"{caller}: all four errors must have the same batch size, got "
            + ", ".join(f"{n}={sizes[n]}" for n in names)
        )
    batch = sizes[names[0]]
    if batch == 0:
        raise ValueError(f"{caller}: empty batch (batch size 0)")
    return batch


def poly_dpo_loss(
    model_err_w: Tensor,
    model_err_l: Tensor,
    ref_err_w: Tensor,
    ref_err_l: Tensor,
    *,
    beta: float,
    alpha: float,
) -> tuple[Tensor, dict[str, float]]:
    """Poly-DPO loss on per-pair denoising errors; ``alpha = 0`` is Diffusion-DPO.

    Args:
        model_err_w, model_err_l: policy errors on winner / loser, shape ``(B,)``, computed with the
            *same* noise and timestep for both members of a pair (otherwise the difference is noise).
        ref_err_w, ref_err_l: the frozen reference's errors on the same inputs, shape ``(B,)``. They
            are detached here: the reference is a constant of the objective even if the caller
            computed it with grad enabled (e.g. a LoRA model with adapters disabled).
        beta: KL strength (> 0). Errors are per-element means, so beta is large: 5000 for
            SD1.5-class epsilon models (``DEFAULT_BETA_EPSILON``, the Diffusion-DPO reference).
        alpha: confidence-term weight. ``alpha > 0`` pushes harder on pairs the model is unsure of
            (p near 0.5; for noisy data), ``alpha < 0`` damps pairs it already ranks right
            (p near 1; for trivially easy pairs), ``0`` is plain DPO. Per-sample gradient w.r.t.
            ``inside`` is ``-(1 - p) * (1 + alpha * p) / B``.

    Returns:
        ``(loss, stats)``: a scalar tensor (dtype at least float32) and python floats ``loss``,
        ``dpo_loss`` (mean ``-logsigmoid(inside)``), ``poly_term`` (mean ``alpha * (1 - p)``),
        ``implicit_acc`` (share of pairs with ``inside > 0``, a tie ``inside == 0`` counting one
        half, as diffusers' `train_diffusion_dpo*.py` count it), ``reward_margin`` (mean ``inside``),
        ``p_mean`` (mean ``p``), ``model_diff`` (mean ``err_w - err_l``), ``ref_diff`` (mean
        ``ref_err_w - ref_err_l``), ``raw_model_loss`` / ``ref_loss`` (the policy's / reference's
        mean denoising error over winners and losers, the references' logged names).
    """
    _check_errors(
        "poly_dpo_loss", "pair", model_err_w=model_err_w, model_err_l=model_err_l, ref_err_w=ref_err_w, ref_err_l=ref_err_l
    )
    beta = float(beta)
    alpha = float(alpha)
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"poly_dpo_loss: beta must be a finite positive number, got {beta}")
    if not math.isfinite(alpha):
        raise ValueError(f"poly_dpo_loss: alpha must be finite, got {alpha}")

    dtype = _accum_dtype(
        torch.promote_types(
            torch.promote_types(model_err_w.dtype, model_err_l.dtype),
            torch.promote_types(ref_err_w.dtype, ref_err_l.dtype),
        )
    )
    model_diff = model_err_w.to(dtype) - model_err_l.to(dtype)
    ref_diff = ref_err_w.detach().to(dtype) - ref_err_l.detach().to(dtype)
    inside = -0.5 * beta * (model_diff - ref_diff)

    dpo_terms = -F.logsigmoid(inside)  # stable for large |inside| (beta is in the thousands)
    p = torch.sigmoid(inside)
    poly_terms = alpha * (1.0 - p)
    dpo_loss = dpo_terms.mean()
    poly_term = poly_terms.mean()
    loss = dpo_loss + poly_term

    with torch.no_grad():
        # one host sync for all stats
        values = torch.stack(
            [
                loss.detach(),
                dpo_loss.detach(),
                poly_term.detach(),
                (inside > 0).to(dtype).mean() + 0.5 * (inside == 0).to(dtype).mean(),
                inside.mean(),
                p.mean(),
                model_diff.mean(),
                ref_diff.mean(),
                0.5 * (model_err_w.detach().to(dtype).mean() + model_err_l.detach().to(dtype).mean()),
                0.5 * (ref_err_w.detach().to(dtype).mean() + ref_err_l.detach().to(dtype).mean()),
            ]
        ).tolist()
    keys = ("loss", "dpo_loss", "poly_term", "implicit_acc", "reward_margin", "p_mean", "model_diff", "ref_diff",
            "raw_model_loss", "ref_loss")
    stats = {k: float(v) for k, v in zip(keys, values)}
    return loss, stats


def sft_loss(model_err_w: Tensor) -> Tensor:
    """Winner-only denoising loss of the "+SFT" recipe: ``mean(model_err_w)``.

    Plain supervised fine-tuning on the preferred samples; added to (or run before) the preference
    loss it anchors the model to the winners' distribution, which DPO alone only constrains relative
    to the losers.
    """
    _check_errors("sft_loss", "sample", model_err_w=model_err_w)
    return model_err_w.to(_accum_dtype(model_err_w.dtype)).mean()
