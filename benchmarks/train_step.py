"""Cost of the Poly-DPO term and of the LoRA-disabled reference, on one tiny model, side by side.

1. Poly-DPO (alpha = 0.5) vs plain Diffusion-DPO (alpha = 0): optimiser-step time (the two alternate
   step by step in one process on one model; the fastest step of each is compared, the usual
   estimator on a loaded machine), the loss + backward alone timed over thousands of calls (its
   difference bounds the step-time ratio without the model's noise), and peak memory of a step.
   Goal: ratio <= 1.02 (the confidence term is a few element-wise ops on B numbers).
2. LoRA training with the reference = the policy with adapters disabled (vipo) vs a frozen deep copy
   of the base denoiser (the naive alternative): memory held by the models and peak memory of a step.

Memory is measured on CPU as process RSS from /proc/self/status, in a fresh subprocess per variant
(so one variant's freed memory cannot hide another's): "models" = VmRSS after loading minus VmRSS
before; "step peak" = VmHWM (reset through /proc/self/clear_refs) over a few steps minus VmRSS before
them. The exact parameter bytes of policy + reference are printed next to it.

    python benchmarks/train_step.py --generator tiny-sd15 --resolution 64 --batch-size 4
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from trainer.batch import PairBatch
from trainer.loop import step_generator, train_step
from trainer.models import LORA_TARGETS, load_train_model


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def _batch(args, seed: int) -> PairBatch:
    g = torch.Generator().manual_seed(seed)
    b, r = args.batch_size, args.resolution
    shape = (b, 3, args.frames, r, r) if args.frames else (b, 3, r, r)
    return PairBatch(torch.rand(shape, generator=g) * 2 - 1, torch.rand(shape, generator=g) * 2 - 1,
                     ["a photo of a cat"] * b, ["aesthetics"] * b, [f"{i:016x}" for i in range(b)])


def _load(args, reference: str):
    """LoRA model whose reference is the adapters-off policy ('disabled') or a frozen base copy ('copy')."""
    if reference == "disabled":
        return load_train_model(args.generator, lora_rank=args.rank, max_sequence_length=16, seed=0)
    from peft import LoraConfig

    model = load_train_model(args.generator, lora_rank=None, max_sequence_length=16, seed=0)  # policy + frozen copy
    model.denoiser.requires_grad_(False)
    torch.manual_seed(0)
    model.denoiser.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
                                          target_modules=list(LORA_TARGETS[model.family])))
    model.lora = True
    return model


def _step(model, opt, batch, i, alpha, beta) -> float:
    t = time.perf_counter()
    loss, _ = train_step(model, model.denoiser, batch, step_generator(0, i, 0, 0), beta=beta, alpha=alpha)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t


def worker(args, variant: dict) -> dict:
    """One variant in this (fresh) process: memory of loading and of a few steps, and step times."""
    import diffusers  # noqa: F401  (imports are not model memory)
    import peft  # noqa: F401
    import transformers  # noqa: F401

    torch.set_num_threads(args.threads)
    batch = _batch(args, 0)
    rss0 = _status("VmRSS")
    model = _load(args, variant["reference"])
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)
    rss1 = _status("VmRSS")
    nets = [model.denoiser] + ([model.frozen_reference] if model.frozen_reference is not None else [])
    param_bytes = sum(p.numel() * p.element_size() for n in nets for p in n.parameters())
    _reset_peak()
    base = _status("VmRSS")
    times = [_step(model, opt, batch, i, variant["alpha"], args.beta) for i in range(args.steps)]
    peak = _status("VmHWM") - base
    del times
    return {"models_rss": rss1 - rss0, "step_peak_rss": peak, "param_bytes": param_bytes}


def alternating_times(args, variants: list[tuple[str, float]]) -> list[float]:
    """Median step time per (reference, alpha) variant, the variants' steps interleaved in one process
    (order alternating every round) so machine load hits them alike."""
    torch.set_num_threads(args.threads)
    models = {}
    for ref, _ in variants:
        if ref not in models:
            m = _load(args, ref)
            models[ref] = (m, torch.optim.AdamW(m.trainable_parameters(), lr=1e-4))
    batch = _batch(args, 0)
    times: list[list[float]] = [[] for _ in variants]
    for i in range(args.warmup):
        for ref, alpha in variants:
            _step(*models[ref], batch, i, alpha, args.beta)
    for i in range(args.repeats):
        order = list(range(len(variants))) if i % 2 == 0 else list(reversed(range(len(variants))))
        for k in order:
            ref, alpha = variants[k]
            times[k].append(_step(*models[ref], batch, i, alpha, args.beta))
    return [min(ts) for ts in times]


def loss_cost(args, batch: int, calls: int = 3000) -> tuple[float, float]:
    """Seconds per `poly_dpo_loss` call for alpha = 0 and alpha = args.alpha (min over 5 rounds)."""
    from trainer.losses import poly_dpo_loss

    g = torch.Generator().manual_seed(0)
    errs = [torch.rand(batch, generator=g, requires_grad=True) for _ in range(4)]
    best = {0.0: float("inf"), args.alpha: float("inf")}
    for _ in range(5):
        for a in (0.0, args.alpha):
            t = time.perf_counter()
            for _ in range(calls):
                loss, _ = poly_dpo_loss(*errs, beta=args.beta, alpha=a)
                loss.backward()
            best[a] = min(best[a], (time.perf_counter() - t) / calls)
    return best[0.0], best[args.alpha]


def _spawn(args, variant: dict) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps(variant)] + _forward(args)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _forward(args) -> list[str]:
    return ["--generator", args.generator, "--resolution", str(args.resolution), "--batch-size", str(args.batch_size),
            "--frames", str(args.frames), "--rank", str(args.rank), "--steps", str(args.steps), "--threads", str(args.threads),
            "--beta", str(args.beta)]


def _mib(x: float) -> str:
    return f"{x / 2**20:8.2f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generator", default="tiny-sd15", help="registry name of the (tiny) model")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--frames", type=int, default=0, help="video frames (0: images)")
    ap.add_argument("--batch-size", type=int, default=4, help="pairs per step")
    ap.add_argument("--rank", type=int, default=8, help="LoRA rank")
    ap.add_argument("--alpha", type=float, default=0.5, help="Poly-DPO alpha compared with alpha = 0")
    ap.add_argument("--beta", type=float, default=5000.0)
    ap.add_argument("--steps", type=int, default=5, help="steps per memory worker")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=20, help="timed steps per alpha (interleaved)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args, json.loads(args.worker))))
        return

    load_train_model(args.generator, lora_rank=None)  # materialise the tiny model once, outside the workers
    print(f"{args.generator}: {args.batch_size} pairs of {args.resolution}px"
          f"{f' x {args.frames} frames' if args.frames else ''}, LoRA rank {args.rank}, {args.threads} thread(s)")

    t_dpo, t_poly = alternating_times(args, [("disabled", 0.0), ("disabled", args.alpha)])
    dpo = _spawn(args, {"alpha": 0.0, "reference": "disabled"})
    poly = _spawn(args, {"alpha": args.alpha, "reference": "disabled"})
    print("\n1. Poly-DPO vs DPO (same model, same batch)")
    print(f"   step time  DPO {t_dpo * 1e3:8.1f} ms   Poly-DPO {t_poly * 1e3:8.1f} ms   "
          f"ratio {t_poly / t_dpo:.3f}  (goal <= 1.02; fastest of {args.repeats} interleaved steps each)")
    l0, l1 = loss_cost(args, args.batch_size)
    print(f"   loss + backward alone  DPO {l0 * 1e6:7.1f} us   Poly-DPO {l1 * 1e6:7.1f} us   "
          f"-> step-time ratio bound 1 + {max(l1 - l0, 0) / t_dpo:.2e}")
    print(f"   step peak  DPO {_mib(dpo['step_peak_rss'])}   Poly-DPO {_mib(poly['step_peak_rss'])}   "
          f"ratio {poly['step_peak_rss'] / max(dpo['step_peak_rss'], 1):.3f}  (RSS high-water mark over {args.steps} steps)")

    t_dis, t_copy = alternating_times(args, [("disabled", 0.0), ("copy", 0.0)])
    copy_ = _spawn(args, {"alpha": 0.0, "reference": "copy"})
    print("\n2. LoRA reference: adapters disabled (vipo) vs a frozen copy of the base")
    print(f"   denoiser parameters held   disabled {_mib(dpo['param_bytes'])}   copy {_mib(copy_['param_bytes'])}   "
          f"ratio {dpo['param_bytes'] / copy_['param_bytes']:.3f}  (exact tensor bytes)")
    print(f"   models RSS                 disabled {_mib(dpo['models_rss'])}   copy {_mib(copy_['models_rss'])}   "
          f"ratio {dpo['models_rss'] / copy_['models_rss']:.3f}  (whole pipeline: VAE, text encoder, denoiser(s))")
    print(f"   step peak RSS              disabled {_mib(dpo['step_peak_rss'])}   copy {_mib(copy_['step_peak_rss'])}   "
          f"ratio {dpo['step_peak_rss'] / max(copy_['step_peak_rss'], 1):.3f}")
    print(f"   step time                  disabled {t_dis * 1e3:8.1f} ms   copy {t_copy * 1e3:8.1f} ms   "
          f"ratio {t_dis / t_copy:.3f}  (fastest of {args.repeats} interleaved steps each)")

if __name__ == "__main__":
    main()
