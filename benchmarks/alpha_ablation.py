"""Poly-DPO alpha ablation on controlled synthetic preference data (issue #7, "Must show").

The paper's claim: alpha > 0 helps on noisy (conflicting) preference data, alpha < 0 on trivially easy
pairs, alpha ~ 0 on clean data. This script tests it where the truth is known. Images are 8 x 8
RGB, one smooth base pattern per prompt, and a planted *quality*: a checkerboard artefact of
amplitude `(1 - q) * ARTEFACT` (q in [0, 1]); the better image of a pair is the one with the higher q.

* reference: a toy `diffusers.UNet2DConditionModel` (prompt embedding as its one cross-attention
  token) pre-trained with the epsilon loss on images of every quality, the "base model";
* policy: a copy fine-tuned with `trainer.losses.poly_dpo_loss` for the same number of steps in every
  cell, on a fixed training set of pairs (several epochs, so label noise can be memorised); winner and
  loser share noise and timestep through the trainer's own `trainer.objectives.noise_pair` on a
  `DiffusionObjective` (diffusers `DDPMScheduler.add_noise`, epsilon target);
* regimes: `clean` (moderate quality gaps, true labels), `conflicting` (the same pairs with
  `--flip` of the labels flipped), `easy` (huge gaps: q_w in [0.9, 1], q_l in [0, 0.1]);
* metric: held-out preference accuracy on *clean* pairs of moderate gap (fresh images): the share
  of pairs whose implicit reward, `inside` of the loss averaged over `--eval-draws` shared
  (noise, timestep) draws, ranks the better image first. Every cell sees the same held-out pairs
  and draws. Mean +- std over seeds (data, reference and policy initialisation all change with it).
  Second table: how far the policy drifted as a denoiser, the relative change of its epsilon error
  on the held-out images vs the reference (the over-optimisation side, which accuracy cannot see).

    python -m benchmarks.alpha_ablation            # 3 seeds; ~10 min on 2 idle cores
    python -m benchmarks.alpha_ablation --quick    # 2 seeds, fewer steps: a smoke run

(Run from the repository root with `-m`, or with PYTHONPATH=. ; one torch thread by default: at
this size a step costs op overhead, not FLOPs, and a second thread only spins.)

Caveat printed with the table: with a fixed step budget alpha also scales the gradient
(`(1 - p)(1 + alpha p)`: 1 + alpha/2 at p = 0.5), so part of any trend is a learning-rate effect.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

from trainer.losses import per_sample_error, poly_dpo_loss
from trainer.objectives import DiffusionObjective, noise_pair

REGIMES = ("conflicting", "easy", "clean")
ALPHAS = (-1.0, -0.5, 0.0, 0.5, 1.0)
SIZE, EMBED, ARTEFACT = 8, 16, 0.3


class World:
    """Prompts (an embedding and a base pattern each) and the planted quality artefact."""

    def __init__(self, num_prompts: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.embeds = torch.randn(num_prompts, 1, EMBED, generator=g)
        colour = torch.rand(num_prompts, 3, 1, 1, generator=g) * 1.2 - 0.6
        ramp = torch.linspace(-1, 1, SIZE)
        angle = torch.rand(num_prompts, generator=g) * 2 * math.pi
        grad = torch.cos(angle)[:, None, None] * ramp[None, :, None] + torch.sin(angle)[:, None, None] * ramp[None, None, :]
        self.base = colour + 0.3 * grad[:, None]
        yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
        self.checker = ((yy + xx) % 2 * 2 - 1).float()  # +-1 at the highest frequency

    def images(self, prompts: torch.Tensor, q: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        jitter = 0.1 * torch.randn(len(prompts), 3, 1, 1, generator=g) + 0.05 * torch.randn(len(prompts), 3, SIZE, SIZE, generator=g)
        art = (1 - q)[:, None, None, None] * ARTEFACT * self.checker
        return (self.base[prompts] + jitter + art).clamp(-1, 1)

    def pairs(self, n: int, regime: str, flip: float, g: torch.Generator) -> dict[str, torch.Tensor]:
        prompts = torch.randint(len(self.embeds), (n,), generator=g)
        if regime == "easy":
            q_w, q_l = 0.9 + 0.1 * torch.rand(n, generator=g), 0.1 * torch.rand(n, generator=g)
        else:
            q_l = 0.6 * torch.rand(n, generator=g)
            q_w = q_l + 0.1 + 0.3 * torch.rand(n, generator=g)
        x_w, x_l = self.images(prompts, q_w, g), self.images(prompts, q_l, g)
        if regime == "conflicting":
            swap = torch.rand(n, generator=g) < flip
            x_w, x_l = torch.where(swap[:, None, None, None], x_l, x_w), torch.where(swap[:, None, None, None], x_w, x_l)
        return {"w": x_w, "l": x_l, "c": self.embeds[prompts]}


def tiny_unet(seed: int) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=SIZE, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=EMBED, attention_head_dim=8, norm_num_groups=8,
    )


def errors(unet, noised, cond) -> torch.Tensor:
    """Per-sample error of a (2B, ...) winners-then-losers noised batch."""
    return per_sample_error(unet(noised.noisy, noised.timesteps, encoder_hidden_states=cond).sample, noised.target)


def pretrain(world: World, obj: DiffusionObjective, steps: int, batch: int, lr: float, seed: int) -> UNet2DConditionModel:
    """The reference: epsilon loss on images of every quality (it has no preference of its own)."""
    unet, g = tiny_unet(seed), torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr)
    for _ in range(steps):
        prompts = torch.randint(len(world.embeds), (batch,), generator=g)
        x0 = world.images(prompts, torch.rand(batch, generator=g), g)
        noise, t = torch.randn(x0.shape, generator=g), obj.sample_timesteps(batch, generator=g)
        pred = unet(obj.add_noise(x0, noise, t), obj.model_timesteps(t), encoder_hidden_states=world.embeds[prompts]).sample
        loss = per_sample_error(pred, obj.target(x0, noise, t)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return unet.eval().requires_grad_(False)


def dpo(ref, obj: DiffusionObjective, train: dict, alpha: float, args, seed: int) -> UNet2DConditionModel:
    """Fine-tune a copy of the reference with Poly-DPO; winner and loser share noise and timestep."""
    policy = copy.deepcopy(ref).train().requires_grad_(True)
    opt = torch.optim.AdamW(policy.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(seed + 2)
    n = len(train["w"])
    for _ in range(args.steps):
        idx = torch.randint(n, (args.batch,), generator=g)
        noised = noise_pair(obj, train["w"][idx], train["l"][idx], generator=g)
        cond = train["c"][idx].repeat(2, 1, 1)
        err = errors(policy, noised, cond)
        with torch.no_grad():
            ref_err = errors(ref, noised, cond)
        loss, _ = poly_dpo_loss(err[: args.batch], err[args.batch :], ref_err[: args.batch], ref_err[args.batch :],
                                beta=args.beta, alpha=alpha)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return policy.eval().requires_grad_(False)


@torch.no_grad()
def heldout_eval(policy, ref, obj: DiffusionObjective, held: dict, beta: float, draws: int, seed: int):
    """(`inside` of every held-out pair averaged over `draws` shared (noise, timestep) draws, relative
    change of the policy's denoising error on those images vs the reference's). The draws are the
    same in every cell."""
    g = torch.Generator().manual_seed(seed + 3)
    n, total = len(held["w"]), torch.zeros(len(held["w"]))
    err_sum = ref_sum = 0.0
    cond = held["c"].repeat(2, 1, 1)
    for _ in range(draws):
        noised = noise_pair(obj, held["w"], held["l"], generator=g)
        e, r = errors(policy, noised, cond), errors(ref, noised, cond)
        total += -0.5 * beta * ((e[:n] - e[n:]) - (r[:n] - r[n:]))
        err_sum, ref_sum = err_sum + float(e.sum()), ref_sum + float(r.sum())
    return total / draws, err_sum / ref_sum - 1.0


def run(args) -> dict:
    obj = DiffusionObjective.from_scheduler_config(DDPMScheduler(num_train_timesteps=1000).config, "epsilon")
    acc = {(r, a): [] for r in REGIMES for a in ALPHAS}
    drift = {(r, a): [] for r in REGIMES for a in ALPHAS}
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        world = World(args.prompts, seed)
        g = torch.Generator().manual_seed(1000 + seed)
        held = world.pairs(args.heldout, "clean", 0.0, g)
        ref = pretrain(world, obj, args.ref_steps, args.batch * 2, args.ref_lr, seed)
        for regime in REGIMES:
            train = world.pairs(args.train_pairs, regime, args.flip, torch.Generator().manual_seed(2000 + seed))
            for alpha in ALPHAS:
                policy = dpo(ref, obj, train, alpha, args, seed)
                inside, change = heldout_eval(policy, ref, obj, held, args.beta, args.eval_draws, seed)
                acc[(regime, alpha)].append(float((inside > 0).float().mean()))
                drift[(regime, alpha)].append(100 * change)
                print(f"  seed {seed} {regime:11s} alpha {alpha:+.1f}: held-out accuracy {acc[(regime, alpha)][-1]:.3f}, "
                      f"denoising error vs reference {drift[(regime, alpha)][-1]:+.2f}%", flush=True)
        print(f"seed {seed}: done in {time.perf_counter() - t0:.0f}s", flush=True)
    return {"accuracy": {f"{r}|{a}": v for (r, a), v in acc.items()},
            "error_change_pct": {f"{r}|{a}": v for (r, a), v in drift.items()}}


def table(values: dict, fmt: str, best) -> str:
    """Markdown table, regimes x alphas, mean ± std over seeds, and the best alpha by `best` of the means."""
    head = "| regime | " + " | ".join(f"alpha={a:g}" for a in ALPHAS) + " | best alpha |"
    lines = [head, "| --- " * (len(ALPHAS) + 2) + "|"]
    for r in REGIMES:
        means = [float(np.mean(values[f"{r}|{a}"])) for a in ALPHAS]
        cells = [f"{m:{fmt}} ± {np.std(values[f'{r}|{a}']):{fmt.lstrip('+')}}" for m, a in zip(means, ALPHAS)]
        lines.append(f"| {r} | " + " | ".join(cells) + f" | {ALPHAS[best(means)]:g} |")
    return "\n".join(lines)


def paired_table(values: dict, fmt: str) -> str:
    """Mean over seeds of (cell - the alpha = 0 cell of the same seed): seeds share data and init."""
    others = [a for a in ALPHAS if a != 0.0]
    lines = ["| regime | " + " | ".join(f"alpha={a:g}" for a in others) + " |", "| --- " * (len(others) + 1) + "|"]
    for r in REGIMES:
        base = np.array(values[f"{r}|0.0"])
        lines.append(f"| {r} | " + " | ".join(f"{np.mean(np.array(values[f'{r}|{a}']) - base):{fmt}}" for a in others) + " |")
    return "\n".join(lines)


def report(results: dict, args, seconds: float) -> None:
    print(f"\nheld-out preference accuracy on clean pairs (mean ± std over {args.seeds} seeds; "
          f"{args.steps} Poly-DPO steps of {args.batch} pairs, beta {args.beta:g}, lr {args.lr:g}, "
          f"{args.flip:.0%} flipped in 'conflicting'; {seconds:.0f}s)\n")
    print(table(results["accuracy"], ".3f", lambda m: int(np.argmax(m))))
    print("\npaired difference to alpha = 0 (same seed, data and initialisation), mean over seeds\n")
    print(paired_table(results["accuracy"], "+.3f"))
    print("\nchange of the policy's denoising error on the held-out images vs the reference, % (drift; lower is closer)\n")
    print(table(results["error_change_pct"], "+.2f", lambda m: int(np.argmin(np.abs(m)))))
    print("\nnote: at a fixed step budget alpha also rescales the gradient (x(1 + alpha p)); see docs/poly_dpo_ablation.md")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, help="seeds per cell (data, reference, policy)")
    ap.add_argument("--steps", type=int, default=40, help="Poly-DPO steps per cell")
    ap.add_argument("--ref-steps", type=int, default=150, help="epsilon pre-training steps of the reference")
    ap.add_argument("--batch", type=int, default=64, help="pairs per Poly-DPO step")
    ap.add_argument("--train-pairs", type=int, default=256, help="training pairs per regime (repeated over epochs)")
    ap.add_argument("--heldout", type=int, default=256, help="held-out clean pairs")
    ap.add_argument("--eval-draws", type=int, default=4, help="(noise, timestep) draws averaged per held-out pair")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--flip", type=float, default=0.3, help="share of flipped labels in the conflicting regime")
    ap.add_argument("--beta", type=float, default=500.0)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--ref-lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: per-step cost is op overhead, not FLOPs)")
    ap.add_argument("--json", help="also write the per-seed results here")
    ap.add_argument("--from-json", help="print the tables of a saved --json run instead of running")
    ap.add_argument("--quick", action="store_true", help="2 seeds, 20 steps, 80 reference steps")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.steps, args.ref_steps = 2, 20, 80
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        report(saved, argparse.Namespace(**saved["args"]), float(saved.get("seconds", 0)))
        return
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    results = run(args)
    seconds = time.perf_counter() - t0
    report(results, args, seconds)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "seconds": seconds, **results}, f, indent=1)


if __name__ == "__main__":
    main()
