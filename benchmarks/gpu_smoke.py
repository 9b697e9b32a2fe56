"""The GPU paths that CPU tests cannot reach, one step per call (benchmarks/gpu_smoke.sh runs them all).

    python benchmarks/gpu_smoke.py check    --device cuda                 # torch sees the GPU, bf16, vllm importable
    python benchmarks/gpu_smoke.py build                                   # tiny generators + tiny Qwen2-VL rater to disk
    python benchmarks/gpu_smoke.py generate --device cuda --dtype bfloat16 # tiny SD1.5 + Wan2.1 render, finite, vs float32
    python benchmarks/gpu_smoke.py train    --device cuda --mixed-precision fp16   # one Poly-DPO step through trainer.loop.train
    python benchmarks/gpu_smoke.py rater    --device cuda --dtype bfloat16 --vllm  # vllm vs transformers, same pairs

Models are the tiny twins the tests use, saved under $VIPO_CACHE (pipeline/models.py) and loaded back
with from_pretrained, so nothing needs a network. Each step prints one `ok ...` line with its numbers,
or `FAIL ...` and exits 1. `--device cpu` runs the same code on a CPU (no vllm): the dry run.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

GENERATORS = ("tiny-sd15", "tiny-wan21")  # one UNet image model, one DiT video model (the VAE stays float32)
TOLERANCE = {"float32": 1e-3, "bfloat16": 0.1, "float16": 0.05}  # max |d logprob| allowed between two backends


def fail(message: str) -> None:
    print(f"FAIL {message}", flush=True)
    raise SystemExit(1)


def _spec(name: str, dtype: str = "float32"):
    from pipeline.generators import REGISTRY

    return replace(REGISTRY[name], dtype=dtype)


def _cache() -> Path:
    from pipeline.models import default_cache_dir

    return default_cache_dir()


def step_check(args) -> None:
    print(f"   torch {torch.__version__}, cuda available: {torch.cuda.is_available()}")
    if args.device == "cuda":
        if not torch.cuda.is_available():
            fail("torch.cuda.is_available() is False: no GPU visible to this torch build")
        name = torch.cuda.get_device_name(0)
        x = torch.randn(64, 64, device="cuda", dtype=torch.bfloat16)
        if not torch.isfinite(x @ x).all():
            fail(f"bf16 matmul on {name} is not finite")
        print(f"   {name}, bf16 supported: {torch.cuda.is_bf16_supported()}")
    try:
        import vllm

        print(f"   vllm {vllm.__version__}")
    except ImportError as err:
        if args.device == "cuda":
            fail(f"vllm is not importable ({err}); install the [gpu] extra: pip install -e '.[gpu]'")
        print("   vllm not installed (fine for the CPU dry run)")
    print("ok check")


def step_build(args) -> None:
    from pipeline.judge import rater_model_path
    from pipeline.models import generator_path
    from schemas.config import JudgeConfig

    for name in GENERATORS:
        print(f"   {name}: {generator_path(_spec(name), _cache())}")
    print(f"   rater: {rater_model_path(JudgeConfig(model='tiny'), _cache())}")
    print("ok build")


def step_generate(args) -> None:
    from pipeline.generators import load_pipeline, run_pipeline
    from pipeline.models import generator_path

    prompts, seeds = ["a red apple on a table", "a cat running on grass"], [1, 2]
    for name in GENERATORS:
        folder = generator_path(_spec(name), _cache())
        ref = run_pipeline(load_pipeline(_spec(name), folder, args.device), _spec(name), prompts, seeds, {})
        t = time.perf_counter()
        pipe = load_pipeline(_spec(name, args.dtype), folder, args.device)
        out = run_pipeline(pipe, _spec(name, args.dtype), prompts, seeds, {})  # raises on NaN pixels
        took = time.perf_counter() - t
        diff = max(int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) for a, b in zip(out, ref))
        print(f"   {name} {args.dtype} on {args.device}: {len(out)} x {out[0].shape} uint8 in {took:.1f} s; "
              f"max |pixel - float32 pixel| = {diff}/255")
    print(f"ok generate {args.dtype}")


class _Pairs:
    """A few random image pairs, position-addressed (the loader protocol train() resumes with)."""

    def __init__(self, batches: int, batch_size: int, res: int = 32):
        self.batches, self.batch_size, self.res, self.pos = batches, batch_size, res, 0

    def __iter__(self):
        from trainer.batch import PairBatch

        while self.pos < self.batches:
            g = torch.Generator().manual_seed(self.pos)
            shape = (self.batch_size, 3, self.res, self.res)
            ids = [f"{self.pos:08x}{j:08x}" for j in range(self.batch_size)]
            self.pos += 1
            yield PairBatch(torch.rand(shape, generator=g) * 2 - 1, torch.rand(shape, generator=g) * 2 - 1,
                            ["a photo"] * self.batch_size, ["aesthetics"] * self.batch_size, ids)

    def state_dict(self) -> dict:
        return {"pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.pos = int(state["pos"])


def step_train(args) -> None:
    from schemas.train_config import parse_train_config
    from trainer.loop import train

    out = Path(args.out) / f"train-{args.mixed_precision}"
    cfg = parse_train_config({
        "output_dir": str(out), "seed": 0, "device": "cpu" if args.device == "cpu" else "auto",
        "mixed_precision": args.mixed_precision, "model": {"generator": "tiny-sd15"}, "lora": {"rank": 8},
        "objective": {"beta": 5000.0, "alpha": 0.5}, "optim": {"learning_rate": 1e-4},
        "data": {"paths": ["unused-a-loader-is-injected"]}, "batch_size": 2, "max_steps": 2, "checkpoint_every": 1000,
    }, "gpu_smoke")
    t = time.perf_counter()
    result = train(cfg, loader=_Pairs(cfg.max_steps, cfg.batch_size))
    took = time.perf_counter() - t
    loss = result.last.get("loss", float("nan"))
    if result.steps != cfg.max_steps or not math.isfinite(loss):
        fail(f"train {args.mixed_precision}: {result.steps} of {cfg.max_steps} steps, last loss {loss}")
    print(f"   {args.mixed_precision} on {args.device}: {result.steps} steps in {took:.1f} s, loss {loss:.6f} (finite), "
          f"implicit_acc {result.last.get('implicit_acc')}")
    print(f"ok train {args.mixed_precision}")


def _pairs(n: int):
    from PIL import Image

    from reward_models.vlm.prompting import PairQuery

    rng = np.random.default_rng(0)
    img = lambda: Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8))
    return [PairQuery(f"{i:016x}", "a red apple on a table", "aesthetics", [img()], [img()]) for i in range(n)]


def _logprobs(backend, rater_cls, pairs) -> np.ndarray:
    rater = rater_cls(backend, name="smoke", image_size=56)
    queries = [q for p in pairs for q in rater.queries(p)]
    return np.asarray(backend.label_logprobs(queries), dtype=np.float64)  # (2 * pairs, 2): log P(A), log P(B)


def step_rater(args) -> None:
    from pipeline.judge import rater_model_path
    from reward_models.vlm.rater import VLMRater
    from reward_models.vlm.transformers_backend import TransformersBackend
    from schemas.config import JudgeConfig

    folder = rater_model_path(JudgeConfig(model="tiny"), _cache())
    pairs = _pairs(args.pairs)
    sets: dict[str, np.ndarray] = {}
    for dtype in dict.fromkeys(("float32", args.dtype)):
        t = time.perf_counter()
        sets[f"transformers {dtype}"] = _logprobs(TransformersBackend(folder, dtype=dtype, device=args.device), VLMRater, pairs)
        print(f"   transformers {dtype} on {args.device}: {len(pairs)} pairs in {time.perf_counter() - t:.1f} s")
    if args.vllm:
        from reward_models.vlm.vllm_backend import VLLMBackend

        t = time.perf_counter()
        from transformers import AutoTokenizer

        vocab = len(AutoTokenizer.from_pretrained(folder))  # every token's logprob: the labels are always among them
        backend = VLLMBackend(folder, dtype=args.dtype, max_images=2, top_logprobs=vocab, max_model_len=4096,
                              gpu_memory_utilization=0.3, enforce_eager=True)
        sets[f"vllm {args.dtype}"] = _logprobs(backend, VLMRater, pairs)
        print(f"   vllm {args.dtype}: engine + {len(pairs)} pairs in {time.perf_counter() - t:.1f} s")
    for name, lp in sets.items():
        if not np.isfinite(lp).all():
            fail(f"rater: {name} gave non-finite label logprobs")
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            print(f"   max |d logprob| {a} vs {b}: {np.abs(sets[a] - sets[b]).max():.3e}")
    if args.vllm:
        d = float(np.abs(sets[f"vllm {args.dtype}"] - sets[f"transformers {args.dtype}"]).max())
        if d > TOLERANCE[args.dtype]:
            fail(f"rater: vllm and transformers differ by {d:.3e} > {TOLERANCE[args.dtype]} at {args.dtype}")
    print("ok rater")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=("check", "build", "generate", "train", "rater"))
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"), help="generate / rater")
    ap.add_argument("--mixed-precision", default="bf16", choices=("no", "bf16", "fp16"), help="train")
    ap.add_argument("--vllm", action="store_true", help="rater: also the vllm backend (GPU)")
    ap.add_argument("--pairs", type=int, default=4, help="rater: pairs (each asked in both orders)")
    ap.add_argument("--out", default="gpu-smoke", help="train: run folders go here")
    args = ap.parse_args()
    from pipeline.models import quiet_hf_progress

    quiet_hf_progress()
    torch.manual_seed(0)
    globals()[f"step_{args.step}"](args)


if __name__ == "__main__":
    main()
