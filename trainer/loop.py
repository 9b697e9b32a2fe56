"""The Poly-DPO training loop on `accelerate`: one code path for CPU, one GPU, DDP and FSDP.

Per micro-batch of B pairs: encode both images (frozen VAE) and the prompts (frozen text encoders),
draw one noise tensor and one timestep per pair (shared by winner and loser), run the reference
(no grad) and then the policy on the stacked (winners, losers) batch, and optimise
`poly_dpo_loss` (or, for the first `objective.sft_steps` steps of the "+SFT" recipe, `sft_loss` on
the winners). Every random draw of a step comes from a generator seeded by (seed, step, micro-batch,
rank), so a resumed run repeats exactly what an uninterrupted one would have done.

Multi-GPU: `accelerate launch cli.py train --config ...`; each rank reads its own slice of the data
(`build_loader(..., rank, world_size)`).
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import importlib.util
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from pipeline.locks import FolderLock
from schemas.errors import VipoError
from schemas.train_config import RUN_CONFIG, OptimConfig, TrainConfig
from trainer.batch import PairBatch
from trainer.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    register_trainable_only_hooks,
    save_checkpoint,
)
from trainer.losses import (
    DEFAULT_BETA_EPSILON,
    per_sample_error,
    poly_dpo_loss,
    sft_loss,
)
from trainer.models import FLOW_FAMILIES, TrainModel, load_train_model, resolve_spec
from trainer.objectives import DEFAULT_BETA_FLOW, noise_pair

__all__ = [
    "METRIC_COLUMNS", "NonFiniteError", "TrainResult", "build_optimizer", "effective_learning_rate", "train", "train_step",
]

METRIC_COLUMNS = (
    "step", "phase", "loss", "implicit_acc", "reward_margin", "p_mean", "raw_model_loss", "ref_loss", "sft_loss", "lr",
)


class Reporter(Protocol):
    def start(self, stage: str, total: int) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def finish(self, summary: Any) -> None: ...


class _Silent:
    def start(self, stage: str, total: int) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def finish(self, summary: Any) -> None: ...


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    resumed_from: int
    final_dir: Path | None
    metrics_csv: Path
    last: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        last = ", ".join(f"{k} {v:.4g}" for k, v in self.last.items() if isinstance(v, float))
        resumed = f" (resumed at step {self.resumed_from})" if self.resumed_from else ""
        return f"train: {self.steps} steps{resumed}; {last}; weights: {self.final_dir}"


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    """CPU generator for one micro-batch: a pure function of where the run is (resume-exact)."""
    digest = hashlib.sha256(f"{seed}:{step}:{micro}:{rank}".encode()).digest()
    return torch.Generator("cpu").manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def build_optimizer(cfg: OptimConfig, params: list[torch.nn.Parameter], lr: float | None = None) -> torch.optim.Optimizer:
    """The configured optimiser at `lr` (default `cfg.learning_rate`; the loop passes the scaled one)."""
    lr = cfg.learning_rate if lr is None else lr
    if not params:
        raise ValueError("optimizer: the model has no trainable parameters")
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                 eps=cfg.adam_epsilon, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise RuntimeError("optim.optimizer: adamw8bit needs bitsandbytes (pip install -e '.[gpu]'; CUDA only)") from None
        return bnb.optim.AdamW8bit(params, lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                   eps=cfg.adam_epsilon, weight_decay=cfg.weight_decay)
    from transformers.optimization import Adafactor

    # External learning rate (our schedule), no relative steps: the diffusers scripts' Adafactor setup.
    return Adafactor(params, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False,
                     weight_decay=cfg.weight_decay)


def default_beta(model: TrainModel) -> float:
    return DEFAULT_BETA_FLOW if model.family in FLOW_FAMILIES else DEFAULT_BETA_EPSILON


def train_step(model: TrainModel, policy: torch.nn.Module, batch: PairBatch, generator: torch.Generator, *,
               beta: float, alpha: float, sft_only: bool = False, sft_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one micro-batch (not yet backpropagated) and its stats."""
    h, w = batch.pixels_w.shape[-2:]
    lat_w = model.encode_pixels(batch.pixels_w, generator)
    lat_l = model.encode_pixels(batch.pixels_l, generator)
    cond = model.encode_prompts(batch.prompts, int(h), int(w), batch.original_sizes, batch.crop_top_lefts)
    noised = noise_pair(model.objective, lat_w, lat_l, generator)

    def errors(net: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        out = model.predict(net, noised.noisy, noised.timesteps, cond)
        return per_sample_error(noised.prediction(model.objective, out), noised.target).chunk(2)

    if not sft_only:
        with torch.no_grad(), model.reference(policy) as ref:
            ref_err_w, ref_err_l = errors(ref)
    err_w, err_l = errors(policy)
    sft = sft_loss(err_w)
    if sft_only:
        raw = 0.5 * (err_w.detach().mean() + err_l.detach().mean())
        return sft, {"loss": float(sft.detach()), "sft_loss": float(sft.detach()), "raw_model_loss": float(raw)}
    loss, stats = poly_dpo_loss(err_w, err_l, ref_err_w, ref_err_l, beta=beta, alpha=alpha)
    if sft_weight:
        loss = loss + sft_weight * sft
        stats["loss"] = float(loss.detach())
    stats["sft_loss"] = float(sft.detach())
    return loss, stats


class _MetricsCSV:
    """metrics.csv, one row per logged step; on resume rows past the checkpoint are dropped."""

    def __init__(self, path: Path, resume_step: int, columns: tuple[str, ...] = METRIC_COLUMNS):
        self.path, self.columns = path, columns
        rows: list[dict[str, str]] = []
        if resume_step and path.exists():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        self._f = path.open("w", newline="")
        self._w = csv.DictWriter(self._f, fieldnames=columns, extrasaction="ignore")
        self._w.writeheader()
        self._w.writerows(rows)
        self._f.flush()

    def write(self, row: dict[str, Any]) -> None:
        self._w.writerow({k: ("" if row.get(k) is None else row[k]) for k in self.columns})
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def _check_tracker(name: str) -> None:
    module = {"tensorboard": "tensorboard", "wandb": "wandb"}[name]
    if importlib.util.find_spec(module) is None:
        raise RuntimeError(f"report_to: {name} is not installed (pip install {module}, or pip install -e '.[logging]')")


def _build_loader(cfg: TrainConfig, rank: int, world_size: int) -> Iterable[PairBatch]:
    from trainer.data import build_loader

    return build_loader(cfg.data, cfg.batch_size, rank=rank, world_size=world_size)


def preflight(cfg: TrainConfig) -> None:
    """Refuse data the model cannot take before anything is loaded (one line, naming the key)."""
    family = resolve_spec(cfg.model.generator, cfg.model.path, cfg.model.pipeline_class).family
    if cfg.data.modality == "video" and family != "wan21":
        raise ValueError(f"data.modality: video pairs need a video model; {cfg.model.generator!r} is a {family} image model")
    if family == "wan21" and cfg.data.modality == "video" and (cfg.data.num_frames - 1) % 4:
        raise ValueError(f"data.num_frames: {cfg.data.num_frames}; the Wan VAE needs (num_frames - 1) % 4 == 0 (e.g. 5, 9, 33)")
    if cfg.eval is not None:  # the eval config is read and checked before anything is loaded
        from trainer.periodic_eval import PeriodicEval

        PeriodicEval(cfg, Path(cfg.output_dir))


def effective_learning_rate(cfg: TrainConfig, num_processes: int) -> float:
    """`optim.learning_rate`, times the total batch (pairs per optimiser step) when `optim.scale_lr`.

    The rule of Salesforce DiffusionDPO `train.py` and the diffusers scripts' `--scale_lr`:
    ``learning_rate * gradient_accumulation_steps * train_batch_size * num_processes``.
    """
    lr = cfg.optim.learning_rate
    if cfg.optim.scale_lr:
        lr *= cfg.gradient_accumulation_steps * cfg.batch_size * num_processes
    return lr


class NonFiniteError(VipoError, FloatingPointError):
    """A non-finite loss or gradient: the run stopped before applying it and saved nothing of it
    (an expected failure: `cli.py train` prints its one line, exit code 2)."""


def _pairs(ids: list[str], shown: int = 4) -> str:
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return ", ".join(ids[:shown]) + more


def _any_rank(accelerator: Any, problem: str | None, step: int) -> str | None:
    """The local problem, or a note that another rank had one (every rank must stop together)."""
    if accelerator.num_processes == 1:
        return problem
    flag = torch.tensor([0.0 if problem is None else 1.0], device=accelerator.device)
    others = float(accelerator.reduce(flag, reduction="sum")) > 0  # a collective: every rank calls it
    if problem is None and others:
        return f"non-finite loss on another rank at step {step}"
    return problem


def train(cfg: TrainConfig, reporter: Reporter | None = None, *, loader: Iterable[PairBatch] | None = None) -> TrainResult:
    """Run (or resume) the training `cfg` describes; returns where the results are.

    `loader` replaces the configured data (any iterable of PairBatch with `state_dict()` /
    `load_state_dict()`), for tests and custom sources; `reporter` gets start/advance/finish calls
    and, when it has one, `metrics(row)` per logged step. A non-finite loss or gradient raises
    `NonFiniteError` before the optimiser applies it: no checkpoint and no `final/` of that state.
    """
    from accelerate import Accelerator

    preflight(cfg)
    if cfg.report_to != "none":
        _check_tracker(cfg.report_to)
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        cpu=cfg.device == "cpu", log_with=None if cfg.report_to == "none" else cfg.report_to, project_dir=cfg.output_dir,
    )
    # one run per folder (docs/reliability.md, "Concurrency"); rank 0 holds it for every rank
    lock = FolderLock(cfg.output_dir, "train") if accelerator.is_main_process else contextlib.nullcontext()
    try:
        with lock:
            return _run(cfg, accelerator, reporter or _Silent(), loader)
    finally:
        if accelerator.num_processes == 1:
            # accelerate keeps its state in process-wide singletons; a single-process run releases it
            # (also after an error) so the next train() in this process may use other settings (bf16)
            from accelerate.state import AcceleratorState, GradientState

            AcceleratorState._reset_state(reset_partial_state=True)
            GradientState._reset_state()


def _run(cfg: TrainConfig, accelerator: Any, reporter: Reporter, loader: Iterable[PairBatch] | None) -> TrainResult:
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    out = Path(cfg.output_dir)
    ckpt_root = out / "checkpoints"
    set_seed(cfg.seed)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / RUN_CONFIG).write_text(cfg.model_dump_json(indent=2))
    m = cfg.model
    model = load_train_model(
        m.generator, path=m.path, pipeline_class=m.pipeline_class, vae=m.vae, lora_rank=cfg.lora.rank if cfg.lora else None,
        lora_alpha=cfg.lora.alpha if cfg.lora else None,
        lora_targets=tuple(cfg.lora.target_modules) if cfg.lora and cfg.lora.target_modules else None,
        mixed_precision=cfg.mixed_precision, prediction_type=m.prediction_type, flow_weighting=cfg.objective.flow_weighting,
        flow_logit_mean=cfg.objective.flow_logit_mean, flow_logit_std=cfg.objective.flow_logit_std,
        flow_shift=cfg.objective.flow_shift, flow_target=cfg.objective.flow_target, max_sequence_length=m.max_sequence_length,
        gradient_checkpointing=cfg.gradient_checkpointing, device=accelerator.device, cache_dir=cfg.cache_dir,
        seed=cfg.seed,
    )
    model.flux_guidance = m.flux_guidance
    beta = cfg.objective.beta or default_beta(model)
    n = accelerator.num_processes  # the prepared scheduler steps once per process per optimiser step
    lr = effective_learning_rate(cfg, n)
    optimizer = build_optimizer(cfg.optim, model.trainable_parameters(), lr=lr)
    # transformers' "constant" ignores warmup; "constant_with_warmup" is the same schedule with it
    sched_name = "constant_with_warmup" if cfg.optim.lr_scheduler == "constant" else cfg.optim.lr_scheduler
    lr_sched = get_scheduler(sched_name, optimizer, num_warmup_steps=cfg.optim.warmup_steps * n,
                             num_training_steps=cfg.max_steps * n)
    if model.lora:
        register_trainable_only_hooks(accelerator, model.denoiser)
    policy, optimizer, lr_sched = accelerator.prepare(model.denoiser, optimizer, lr_sched)

    data = loader if loader is not None else _build_loader(cfg, accelerator.process_index, accelerator.num_processes)
    step = 0
    latest = latest_checkpoint(ckpt_root) if cfg.resume else None
    if latest is not None:
        step, loader_state = load_checkpoint(accelerator, latest)
        if loader_state is not None:
            data.load_state_dict(loader_state)
    resumed_from = step
    periodic = None
    if cfg.eval is not None and accelerator.is_main_process:
        from trainer.periodic_eval import PeriodicEval

        periodic = PeriodicEval(cfg, out)
    columns = METRIC_COLUMNS + tuple(periodic.columns if periodic else ())
    metrics = _MetricsCSV(out / "metrics.csv", step, columns) if accelerator.is_main_process else None
    if cfg.report_to != "none":
        accelerator.init_trackers("vipo-train", config={"alpha": cfg.objective.alpha, "beta": beta,
                                                        "lr": lr, "generator": m.generator})
    reporter.start("train", cfg.max_steps)
    if step:
        reporter.advance(step)
    last: dict[str, Any] = {}
    sums: dict[str, float] = {}
    micro, window, problem = 0, [], None  # micro-batches, pair ids and first non-finite loss of this step
    accum, rank = cfg.gradient_accumulation_steps, accelerator.process_index
    try:
        batches = iter(data)
        while step < cfg.max_steps:
            try:
                batch = next(batches)
            except StopIteration:
                break
            sft_only = step < cfg.objective.sft_steps
            window += batch.pair_ids
            with accelerator.accumulate(policy):
                gen = step_generator(cfg.seed, step, micro, rank)
                loss, stats = train_step(model, policy, batch, gen, beta=beta, alpha=cfg.objective.alpha,
                                         sft_only=sft_only, sft_weight=cfg.objective.sft_weight)
                if problem is None and not math.isfinite(stats["loss"]):
                    problem = (f"non-finite loss ({stats['loss']}) at step {step + 1}, micro-batch {micro + 1} of {accum}, "
                               f"rank {rank}, pairs {_pairs(batch.pair_ids)}")
                accelerator.backward(loss)  # every rank, so DDP's gradient all-reduce never waits for one
                if accelerator.sync_gradients:
                    problem = _any_rank(accelerator, problem, step + 1)
                    clip = cfg.optim.max_grad_norm if cfg.optim.max_grad_norm is not None else math.inf
                    norm = float(accelerator.clip_grad_norm_(model.trainable_parameters(), clip))
                    # fp16: an overflowing gradient is the GradScaler's to skip; bf16 / fp32 have no such step
                    if problem is None and not math.isfinite(norm) and cfg.mixed_precision != "fp16":
                        problem = f"non-finite gradient norm ({norm}) at step {step + 1}, rank {rank}, pairs {_pairs(window)}"
                    if problem is not None:
                        kept = latest_checkpoint(ckpt_root)
                        raise NonFiniteError(f"train: {problem}; stopped before the optimiser step, nothing of it saved "
                                             f"(newest checkpoint: {kept.name if kept else 'none'}); "
                                             "lower optim.learning_rate or check those pairs")
                lr_used = float(optimizer.param_groups[0]["lr"])  # what this step applies (logged as `lr`)
                optimizer.step()
                lr_sched.step()
                optimizer.zero_grad(set_to_none=True)
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
            micro += 1
            if not accelerator.sync_gradients:
                continue
            means = {k: v / micro for k, v in sums.items()}
            keys = sorted(means)
            if n > 1:  # average over ranks
                t = torch.tensor([means[k] for k in keys], device=accelerator.device, dtype=torch.float64)
                means = dict(zip(keys, accelerator.reduce(t, reduction="mean").tolist()))
            sums, micro, window = {}, 0, []
            step += 1
            last = {"step": step, "phase": "sft" if sft_only else "dpo", **means, "lr": lr_used}
            evaluated = cfg.eval is not None and (step % cfg.eval.every == 0 or step == cfg.max_steps)
            if periodic is not None and evaluated:
                last.update(periodic.run(step, lambda folder: model.save_final(folder, accelerator.unwrap_model(policy)),
                                         lora=bool(model.lora)))
            if evaluated:
                accelerator.wait_for_everyone()  # the other ranks wait while rank 0 evaluates
            if step % cfg.log_every == 0 or step == cfg.max_steps or evaluated:
                if metrics is not None:
                    metrics.write(last)
                if cfg.report_to != "none":
                    accelerator.log({k: v for k, v in last.items() if isinstance(v, float)}, step=step)
                if hasattr(reporter, "metrics"):
                    reporter.metrics(last)
            if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:  # a finished run resumes as finished
                state = data.state_dict() if hasattr(data, "state_dict") else None
                save_checkpoint(accelerator, ckpt_root, step, state, cfg.keep_checkpoints)
            reporter.advance(1)
    finally:
        if metrics is not None:
            metrics.close()
    accelerator.wait_for_everyone()
    final_dir = None
    if accelerator.is_main_process:
        final_dir = model.save_final(out / "final", accelerator.unwrap_model(policy))
    accelerator.end_training()
    if step < cfg.max_steps:
        last["stopped_early"] = f"data ran out after {step} of {cfg.max_steps} steps"
    result = TrainResult(out, step, resumed_from, final_dir, out / "metrics.csv", last)
    reporter.finish(result)
    return result
