"""trainer/losses.py: Poly-DPO against independent float64 computations (math.*, not the code under test)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainer.losses import DEFAULT_BETA_EPSILON, per_sample_error, poly_dpo_loss, sft_loss

ALPHAS = [-1.0, -0.5, 0.0, 0.5, 1.0]

# A small batch, float64, chosen so inside = -0.5 * beta * (dm - dr) spans both signs, a tie, and a
# large |inside| (beta = 5000 scale).
ERR_W = [0.10, 0.20, 0.30, 0.40, 0.25]
ERR_L = [0.12, 0.18, 0.30, 0.40, 0.20]
REF_W = [0.11, 0.19, 0.29, 0.40, 0.25]
REF_L = [0.11, 0.19, 0.30, 0.40, 0.25]


def _t(xs, dtype=torch.float64, requires_grad=False):
    return torch.tensor(xs, dtype=dtype, requires_grad=requires_grad)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _neg_logsigmoid(x: float) -> float:
    # -log(sigmoid(x)) = log(1 + exp(-x)), written stably
    return math.log1p(math.exp(-x)) if x >= 0 else -x + math.log1p(math.exp(x))


def _expected(err_w, err_l, ref_w, ref_l, beta, alpha):
    insides = [-0.5 * beta * ((a - b) - (c - d)) for a, b, c, d in zip(err_w, err_l, ref_w, ref_l)]
    n = len(insides)
    ps = [_sigmoid(x) for x in insides]
    dpo = sum(_neg_logsigmoid(x) for x in insides) / n
    poly = sum(alpha * (1.0 - p) for p in ps) / n
    return {
        "insides": insides,
        "loss": dpo + poly,
        "dpo_loss": dpo,
        "poly_term": poly,
        "implicit_acc": (sum(1 for x in insides if x > 0) + 0.5 * sum(1 for x in insides if x == 0)) / n,
        "raw_model_loss": 0.5 * (sum(err_w) / n + sum(err_l) / n),
        "ref_loss": sum(ref_w + ref_l) / (2 * n),
        "reward_margin": sum(insides) / n,
        "p_mean": sum(ps) / n,
    }


# ---------------------------------------------------------------- alpha = 0 is Diffusion-DPO


def test_alpha_zero_is_diffusion_dpo():
    g = torch.Generator().manual_seed(0)
    ew, el, rw, rl = (torch.rand(16, generator=g, dtype=torch.float64) * 0.2 for _ in range(4))
    beta = DEFAULT_BETA_EPSILON
    loss, stats = poly_dpo_loss(ew, el, rw, rl, beta=beta, alpha=0.0)
    # diffusers examples/research_projects/diffusion_dpo/train_diffusion_dpo_sdxl.py, written out directly
    model_diff = ew - el
    ref_diff = rw - rl
    inside_term = -0.5 * beta * (model_diff - ref_diff)
    direct = -1 * F.logsigmoid(inside_term).mean()
    implicit_acc = (inside_term > 0).sum().double() / inside_term.size(0)
    implicit_acc += 0.5 * (inside_term == 0).sum().double() / inside_term.size(0)
    raw_model_loss = 0.5 * (ew.mean() + el.mean())
    raw_ref_loss = torch.cat([rw, rl]).mean()
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(direct.item(), rel=1e-12, abs=1e-12)
    assert stats["poly_term"] == 0.0
    assert stats["dpo_loss"] == pytest.approx(stats["loss"], rel=1e-12)
    assert stats["implicit_acc"] == pytest.approx(implicit_acc.item(), abs=0)
    assert stats["raw_model_loss"] == pytest.approx(raw_model_loss.item(), rel=1e-15)
    assert stats["ref_loss"] == pytest.approx(raw_ref_loss.item(), rel=1e-15)


def test_default_beta_is_reference_value():
    assert DEFAULT_BETA_EPSILON == 5000.0


# ---------------------------------------------------------------- hand-computed values


@pytest.mark.parametrize("alpha", ALPHAS)
def test_small_batch_matches_float64_reference(alpha):
    beta = 100.0
    exp = _expected(ERR_W, ERR_L, REF_W, REF_L, beta, alpha)
    # sanity of the fixture itself: a right pair, a wrong pair and an exact tie
    assert exp["insides"][0] > 0 and exp["insides"][1] < 0 and exp["insides"][3] == 0.0
    loss, stats = poly_dpo_loss(_t(ERR_W), _t(ERR_L), _t(REF_W), _t(REF_L), beta=beta, alpha=alpha)
    assert loss.ndim == 0
    assert loss.item() == pytest.approx(exp["loss"], rel=1e-12, abs=1e-12)
    for key in ("loss", "dpo_loss", "poly_term", "implicit_acc", "reward_margin", "p_mean", "raw_model_loss", "ref_loss"):
        assert isinstance(stats[key], float), key
        assert stats[key] == pytest.approx(exp[key], rel=1e-12, abs=1e-12), key


def test_hand_computed_two_pairs():
    # inside = -0.5 * 2 * ((e_w - e_l) - 0) = -(e_w - e_l): pair 1 -> +1, pair 2 -> -2
    loss, stats = poly_dpo_loss(
        _t([0.0, 2.0]), _t([1.0, 0.0]), _t([0.0, 0.0]), _t([0.0, 0.0]), beta=2.0, alpha=0.5
    )
    s1, s2 = 1.0 / (1.0 + math.exp(-1.0)), 1.0 / (1.0 + math.exp(2.0))
    dpo = (math.log(1.0 + math.exp(-1.0)) + math.log(1.0 + math.exp(2.0))) / 2.0
    poly = 0.5 * ((1.0 - s1) + (1.0 - s2)) / 2.0
    assert loss.item() == pytest.approx(dpo + poly, rel=1e-13)
    assert stats["dpo_loss"] == pytest.approx(dpo, rel=1e-13)
    assert stats["poly_term"] == pytest.approx(poly, rel=1e-13)
    assert stats["implicit_acc"] == 0.5
    assert stats["reward_margin"] == pytest.approx(-0.5, rel=1e-13)
    assert stats["p_mean"] == pytest.approx((s1 + s2) / 2.0, rel=1e-13)


def test_stats_exact():
    # insides (beta = 2, refs 0): -(e_w - e_l) = [3, 1, 0, -1] -> acc (2 + 0.5) / 4 (a tie counts one half)
    loss, stats = poly_dpo_loss(
        _t([0.0, 0.0, 1.0, 1.0]), _t([3.0, 1.0, 1.0, 0.0]), _t([0.0] * 4), _t([0.0] * 4), beta=2.0, alpha=-0.5
    )
    ps = [_sigmoid(x) for x in (3.0, 1.0, 0.0, -1.0)]
    assert stats["implicit_acc"] == 0.625
    assert stats["raw_model_loss"] == 0.5 * (0.5 + 1.25) and stats["ref_loss"] == 0.0
    assert stats["reward_margin"] == 0.75
    assert stats["p_mean"] == pytest.approx(sum(ps) / 4, rel=1e-14)
    assert stats["p_mean"] == pytest.approx(0.5 + (ps[0] - 0.5) / 4, rel=1e-14)  # sigmoid symmetry
    assert stats["model_diff"] == -0.75 and stats["ref_diff"] == 0.0
    assert stats["loss"] == pytest.approx(stats["dpo_loss"] + stats["poly_term"], rel=1e-14)
    assert stats["loss"] == loss.item()
    all_right = poly_dpo_loss(_t([0.0]), _t([1.0]), _t([0.0]), _t([0.0]), beta=2.0, alpha=0.0)[1]
    assert all_right["implicit_acc"] == 1.0


def test_reference_shift_cancels():
    # the same policy/reference offset on both members leaves the loss unchanged; the sign of the
    # reference term is the opposite of the policy's
    a, stats_a = poly_dpo_loss(_t(ERR_W), _t(ERR_L), _t(REF_W), _t(REF_L), beta=50.0, alpha=0.3)
    b, _ = poly_dpo_loss(_t(ERR_W) + 1.0, _t(ERR_L) + 1.0, _t(REF_W) + 7.0, _t(REF_L) + 7.0, beta=50.0, alpha=0.3)
    assert a.item() == pytest.approx(b.item(), rel=1e-10)
    # raising the reference's winner error (reference did worse on the winner) lowers the policy's margin
    _, stats_c = poly_dpo_loss(_t(ERR_W), _t(ERR_L), _t(REF_W) + 0.01, _t(REF_L), beta=50.0, alpha=0.3)
    assert stats_c["reward_margin"] == pytest.approx(stats_a["reward_margin"] + 0.5 * 50.0 * 0.01, rel=1e-10)


def test_large_beta_is_finite():
    # beta 5000 with error gaps of 0.1 gives |inside| = 250: must not overflow
    loss, stats = poly_dpo_loss(
        _t([0.0, 0.1]), _t([0.1, 0.0]), _t([0.0, 0.0]), _t([0.0, 0.0]), beta=DEFAULT_BETA_EPSILON, alpha=1.0
    )
    assert math.isfinite(loss.item())
    # pair 1: inside = +250 -> ~0 loss; pair 2: inside = -250 -> 250 + alpha * 1
    assert loss.item() == pytest.approx((250.0 + 1.0) / 2.0, rel=1e-12)
    loss32, _ = poly_dpo_loss(
        _t([0.0, 0.1], torch.float32), _t([0.1, 0.0], torch.float32), _t([0.0, 0.0], torch.float32),
        _t([0.0, 0.0], torch.float32), beta=DEFAULT_BETA_EPSILON, alpha=1.0,
    )
    assert math.isfinite(loss32.item())


# ---------------------------------------------------------------- gradient


@pytest.mark.parametrize("alpha", ALPHAS)
def test_gradient_closed_form(alpha):
    # ref errors = 0 and err_l = 0, so inside = -0.5 * beta * err_w exactly; dL/dinside per sample is
    # -(1 - p)(1 + alpha p) / B, and by the chain rule dL/derr_w = dL/dinside * (-0.5 beta).
    beta = 4.0
    insides = [2.0, 0.5, 0.0, -0.7, -3.0]
    n = len(insides)
    err_w = _t([x / (-0.5 * beta) for x in insides], requires_grad=True)
    err_l = _t([0.0] * n, requires_grad=True)
    loss, stats = poly_dpo_loss(err_w, err_l, _t([0.0] * n), _t([0.0] * n), beta=beta, alpha=alpha)
    gw, gl = torch.autograd.grad(loss, (err_w, err_l))
    for i, x in enumerate(insides):
        p = _sigmoid(x)
        d_inside = -(1.0 - p) * (1.0 + alpha * p) / n
        assert gw[i].item() == pytest.approx(d_inside * (-0.5 * beta), rel=1e-12, abs=1e-15), i
        assert gl[i].item() == pytest.approx(d_inside * (+0.5 * beta), rel=1e-12, abs=1e-15), i
    assert stats["reward_margin"] == pytest.approx(sum(insides) / n, rel=1e-12)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_gradient_wrt_inside_leaf(alpha):
    # the same closed form seen from a leaf "inside" tensor: beta = 2, refs 0, err_l = 0 -> err_w = -inside
    inside = _t([1.5, 0.2, -0.4, -2.5], requires_grad=True)
    n = inside.shape[0]
    zeros = torch.zeros(n, dtype=torch.float64)
    loss, _ = poly_dpo_loss(-inside, zeros, zeros, zeros, beta=2.0, alpha=alpha)
    (g,) = torch.autograd.grad(loss, inside)
    p = torch.sigmoid(inside.detach())
    closed = -(1 - p) * (1 + alpha * p) / n
    torch.testing.assert_close(g, closed, rtol=1e-12, atol=1e-15)


def test_alpha_sign_reweights_uncertain_vs_easy():
    # relative to DPO, alpha > 0 increases the push on an uncertain pair (p = 0.5) more than on an
    # easy one; alpha < 0 shrinks the push on the easy pair
    inside = _t([0.0, 4.0], requires_grad=True)
    zeros = torch.zeros(2, dtype=torch.float64)

    def grad(alpha):
        loss, _ = poly_dpo_loss(-inside, zeros, zeros, zeros, beta=2.0, alpha=alpha)
        return torch.autograd.grad(loss, inside)[0].abs()

    g0, gp, gn = grad(0.0), grad(1.0), grad(-1.0)
    assert (gp / g0)[0] == pytest.approx(1.5)  # 1 + alpha * 0.5
    assert (gn / g0)[1] == pytest.approx(1.0 - _sigmoid(4.0), rel=1e-12)  # easy pair nearly silenced


def test_reference_gets_no_gradient():
    ew, el = _t(ERR_W, requires_grad=True), _t(ERR_L, requires_grad=True)
    rw, rl = _t(REF_W, requires_grad=True), _t(REF_L, requires_grad=True)
    loss, _ = poly_dpo_loss(ew, el, rw, rl, beta=10.0, alpha=0.5)
    loss.backward()
    assert ew.grad is not None and el.grad is not None
    assert rw.grad is None and rl.grad is None
    # detached: the reference is not even part of the graph
    with pytest.raises(RuntimeError):
        torch.autograd.grad(poly_dpo_loss(ew, el, rw, rl, beta=10.0, alpha=0.5)[0], rw)


# ---------------------------------------------------------------- per_sample_error / sft_loss


def test_per_sample_error_shape_and_values():
    pred = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    target = torch.zeros_like(pred)
    err = per_sample_error(pred, target)
    assert err.shape == (2,) and err.dtype == torch.float32
    expected = [sum(v * v for v in range(12)) / 12.0, sum(v * v for v in range(12, 24)) / 12.0]
    assert err.tolist() == pytest.approx(expected, rel=1e-7)
    # 5-D video latents (B, C, T, H, W) and a 1-D batch-only input
    assert per_sample_error(torch.ones(3, 4, 2, 5, 5), torch.zeros(3, 4, 2, 5, 5)).tolist() == [1.0, 1.0, 1.0]
    assert per_sample_error(_t([1.0, -2.0]), _t([0.0, 1.0])).tolist() == [1.0, 9.0]


def test_per_sample_error_bf16_accumulates_in_float32():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 4, 64, 64, generator=g).to(torch.bfloat16)
    target = torch.randn(2, 4, 64, 64, generator=g).to(torch.bfloat16)
    err = per_sample_error(pred, target)
    assert err.dtype == torch.float32 and err.shape == (2,)
    exact = ((pred.double() - target.double()) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(err.double(), exact, rtol=1e-6, atol=0)
    # a bf16-only computation is visibly worse (why we upcast)
    naive = ((pred - target) ** 2).flatten(1).mean(1)
    assert naive.dtype == torch.bfloat16
    assert (naive.double() - exact).abs().max() > 100 * (err.double() - exact).abs().max()
    # fp16 too, and gradients flow back to the low-precision leaf
    p16 = pred.to(torch.float16).requires_grad_(True)
    e16 = per_sample_error(p16, target.to(torch.float16))
    assert e16.dtype == torch.float32
    e16.sum().backward()
    assert p16.grad is not None and p16.grad.dtype == torch.float16


def test_per_sample_error_gradient():
    pred = _t([[1.0, 2.0], [3.0, -1.0]], requires_grad=True)
    target = _t([[0.0, 0.0], [1.0, 1.0]])
    per_sample_error(pred, target).sum().backward()
    # d/dpred mean_j (pred - target)^2 = 2 (pred - target) / D
    torch.testing.assert_close(pred.grad, _t([[1.0, 2.0], [2.0, -2.0]]))


def test_sft_loss():
    ew = _t([0.1, 0.2, 0.6], requires_grad=True)
    loss = sft_loss(ew)
    assert loss.item() == pytest.approx(0.3, rel=1e-14)
    loss.backward()
    torch.testing.assert_close(ew.grad, _t([1 / 3] * 3))
    assert sft_loss(torch.tensor([1.0, 2.0], dtype=torch.bfloat16)).dtype == torch.float32


# ---------------------------------------------------------------- errors


def test_per_sample_error_shape_mismatch():
    with pytest.raises(ValueError, match=r"same shape.*\(2, 4, 8, 8\).*\(4, 8, 8\)"):
        per_sample_error(torch.zeros(2, 4, 8, 8), torch.zeros(4, 8, 8))
    with pytest.raises(ValueError, match="batch dimension"):
        per_sample_error(torch.tensor(1.0), torch.tensor(0.0))


@pytest.mark.parametrize(
    "shapes, pattern",
    [
        (((4, 1), (4,), (4,), (4,)), r"model_err_w must be 1-D.*\(4, 1\)"),
        (((4,), (4,), (4,), ()), r"ref_err_l must be 1-D.*\(\)"),
        (((4,), (3,), (4,), (4,)), r"same batch size.*model_err_l=3"),
        (((4,), (4,), (5,), (4,)), r"same batch size.*ref_err_w=5"),
        (((0,), (0,), (0,), (0,)), r"empty batch"),
    ],
)
def test_poly_dpo_shape_errors(shapes, pattern):
    with pytest.raises(ValueError, match=pattern):
        poly_dpo_loss(*(torch.zeros(s) for s in shapes), beta=1.0, alpha=0.0)


def test_poly_dpo_bad_arguments():
    z = torch.zeros(2)
    with pytest.raises(ValueError, match="beta"):
        poly_dpo_loss(z, z, z, z, beta=0.0, alpha=0.0)
    with pytest.raises(ValueError, match="alpha"):
        poly_dpo_loss(z, z, z, z, beta=1.0, alpha=float("nan"))
    with pytest.raises(TypeError, match="ref_err_w"):
        poly_dpo_loss(z, z, [0.0, 0.0], z, beta=1.0, alpha=0.0)
    with pytest.raises(TypeError):
        poly_dpo_loss(z, z, z, z, 1.0, 0.0)  # beta and alpha are keyword-only
    with pytest.raises(ValueError, match=r"sft_loss.*1-D"):
        sft_loss(torch.zeros(2, 3))
