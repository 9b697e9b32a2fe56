"""Typed configuration of a Poly-DPO training run (`python cli.py train --config ...`).

Strict like the build config: unknown keys and wrong types fail, and every error is one line naming
the file and the key (`schemas.config.ConfigError`). The data section is the data side's own model
(`schemas.train_data.TrainDataConfig`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from schemas.config import Strict, validate_config
from schemas.config_io import read_yaml
from schemas.train_data import TrainDataConfig

MixedPrecision = Literal["no", "fp16", "bf16"]
RUN_CONFIG = "train_config.json"  # the resolved config a run writes into its output_dir (what `cli.py eval` reads)


class ModelConfig(Strict):
    generator: str = Field(
        description="Generator registry name (sd15, sdxl, sd35-medium, flux-dev, wan21-1.3b, tiny-sd15, ...) "
        "or a new name with pipeline_class and path."
    )
    path: str | None = Field(None, description="Hub id or local diffusers folder; default: the registry's (tiny: built offline).")
    pipeline_class: str | None = Field(None, description="diffusers pipeline class for a generator not in the registry.")
    prediction_type: Literal["epsilon", "v_prediction"] | None = Field(
        None, description="Diffusion models: override the scheduler config's prediction type (e.g. v_prediction for SD2-v)."
    )
    vae: str | None = Field(
        None,
        description="Hub id or local folder of a replacement VAE, loaded with the pipeline VAE's class (the DPO SDXL "
        "script's --pretrained_vae_model_name_or_path, e.g. madebyollin/sdxl-vae-fp16-fix). SDXL's VAE stays float32 "
        "under mixed precision unless its config says force_upcast: false.",
    )
    max_sequence_length: int | None = Field(
        None, ge=1,
        description="T5/UMT5 prompt tokens (SD3, FLUX, Wan); default: what the generator samples with: the registry's "
        "max_sequence_length (flux-dev 512, flux-schnell 256), else the pipeline __call__ default of diffusers 0.42 "
        "(SD3 256, Wan 512).",
    )
    flux_guidance: float = Field(
        3.5, ge=0, description="FLUX guidance-distilled models: the guidance fed during training (train_dreambooth_lora_flux.py's 3.5)."
    )


class LoraSettings(Strict):
    rank: int = Field(16, ge=1, description="LoRA rank r.")
    alpha: float | None = Field(None, gt=0, description="LoRA alpha (scale = alpha / r); default: equal to the rank.")
    target_modules: list[str] | None = Field(
        None,
        min_length=1,
        description="Module names that get adapters (peft suffix match); default: the family's reference script's "
        "(trainer.models.LORA_TARGETS: attention for SD1.5/SDXL, + the context-stream projections for SD3, + the "
        "feed-forwards for FLUX, attention + FFN for Wan).",
    )


class ObjectiveConfig(Strict):
    beta: float | None = Field(
        None, gt=0, description="DPO KL strength; default 5000 for epsilon/v models (Diffusion-DPO), 2500 for flow models."
    )
    alpha: float = Field(0.0, description="Poly-DPO confidence weight: >0 noisy data, <0 trivially easy pairs, 0 = Diffusion-DPO.")
    sft_steps: int = Field(
        0, ge=0, description="The '+SFT' recipe: this many first optimiser steps train the SFT loss on winners, then Poly-DPO."
    )
    sft_weight: float = Field(0.0, ge=0, description="Add sft_weight * SFT loss on winners to the Poly-DPO loss (after sft_steps).")
    flow_weighting: Literal["logit_normal", "uniform", "mode"] = Field(
        "logit_normal",
        description="Flow models: density of u (diffusers' compute_density_for_timestep_sampling); sigma = the "
        "scheduler's sigmas[int(u * 1000)], so sigma ~ 1 - u, as the diffusers SD3/FLUX scripts sample.",
    )
    flow_logit_mean: float = Field(
        0.0, description="Flow models: logit-normal mean of u (the scripts' --logit_mean; > 0 means less noise, sigma ~ 1 - u)."
    )
    flow_logit_std: float = Field(1.0, gt=0, description="Flow models: logit-normal std of u (the scripts' --logit_std).")
    flow_shift: float | None = Field(
        None, gt=0,
        description="Flow models: static time shift of the sigma table, shift*s/(1+(shift-1)*s); default: the scheduler's "
        "own table (SD3: shift 3; FLUX.1-dev: none, its config shifts dynamically at sampling; Wan: flow_shift).",
    )
    flow_target: Literal["velocity", "x0"] = Field(
        "velocity",
        description="Flow models: error in velocity space (target noise - x0; the FLUX script, the SD3 script with "
        "--precondition_outputs 0) or x0 space (prediction -sigma*out + x_s vs x0: the SD3 script's default, "
        "--precondition_outputs 1; errors are sigma^2 times the velocity ones, so beta needs retuning).",
    )


class OptimConfig(Strict):
    optimizer: Literal["adamw", "adamw8bit", "adafactor"] = Field(
        "adamw", description="adamw (torch), adamw8bit (bitsandbytes, installed separately) or adafactor (transformers)."
    )
    learning_rate: float = Field(
        1e-4, gt=0, description="Peak learning rate (after warmup); with scale_lr, per pair of the total batch."
    )
    scale_lr: bool = Field(
        False,
        description="Multiply learning_rate by the pairs per optimiser step (gradient_accumulation_steps * batch_size * "
        "processes), as Salesforce DiffusionDPO's --scale_lr (off by default there and in diffusers). The paper's "
        "1e-8 is with it on at 2048 pairs: 2.048e-5 applied.",
    )
    weight_decay: float = Field(1e-2, ge=0, description="Decoupled weight decay.")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    adam_beta2: float = Field(0.999, ge=0, lt=1, description="AdamW beta2.")
    adam_epsilon: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the gradient norm to this; None disables clipping.")
    lr_scheduler: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="Schedule after warmup (transformers' get_scheduler names)."
    )
    warmup_steps: int = Field(0, ge=0, description="Linear warmup from 0 over this many optimiser steps.")


class TrainEvalConfig(Strict):
    every: int = Field(ge=1, description="Run the eval every this many optimiser steps (and after the last step).")
    config: str = Field(
        description="An eval config (`cli.py eval`'s YAML) giving prompts, seeds, reward models and judge; its base is "
        "replaced by this run's model and its candidates by this run's weights at the step (docs/eval.md, \"During training\")."
    )


class TrainConfig(Strict):
    output_dir: str = Field("./vipo-train", description="Run folder: metrics.csv, checkpoints/, final weights.")
    seed: int = Field(0, description="Seed of LoRA init, VAE sampling, noise and timesteps (per step, so resume is exact).")
    model: ModelConfig = Field(description="The model to fine-tune.")
    lora: LoraSettings | None = Field(
        default_factory=LoraSettings, description="LoRA adapters (reference = adapters disabled); null trains all weights."
    )
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig, description="Loss: beta, alpha, SFT, flow sampling.")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimiser and learning-rate schedule.")
    data: TrainDataConfig = Field(description="Where pairs come from (schemas/train_data.py).")
    batch_size: int = Field(1, ge=1, description="Pairs per device per micro-batch.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches per optimiser step.")
    max_steps: int = Field(1000, ge=1, description="Optimiser steps of the whole run.")
    mixed_precision: MixedPrecision = Field("no", description="accelerate mixed precision: no, fp16 or bf16 (GPU).")
    gradient_checkpointing: bool = Field(False, description="Recompute denoiser activations in backward (less memory, slower).")
    checkpoint_every: int = Field(500, ge=1, description="Save a resumable checkpoint every this many optimiser steps.")
    keep_checkpoints: int | None = Field(3, ge=1, description="Keep the newest N checkpoints; None keeps all.")
    resume: bool = Field(True, description="Continue from the newest checkpoint in output_dir/checkpoints if there is one.")
    log_every: int = Field(1, ge=1, description="Write a metrics row every this many optimiser steps.")
    report_to: Literal["none", "tensorboard", "wandb"] = Field(
        "none", description="Also log metrics to TensorBoard or W&B through accelerate (installed separately)."
    )
    device: Literal["auto", "cpu"] = Field("auto", description="auto: accelerate's choice (GPU when present); cpu forces CPU.")
    cache_dir: str | None = Field(None, description="Where tiny models are materialised; default ~/.cache/vipo.")
    eval: TrainEvalConfig | None = Field(
        None, description="Evaluate the weights every N steps against the base; win rates go into metrics.csv and the trackers."
    )

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.objective.sft_steps >= self.max_steps:
            raise ValueError(f"objective.sft_steps: {self.objective.sft_steps} leaves no Poly-DPO steps (max_steps {self.max_steps})")
        if self.device == "cpu" and self.mixed_precision == "fp16":
            raise ValueError("mixed_precision: fp16 needs a GPU; use bf16 or no with device cpu")
        return self


def parse_train_config(data: Any, source: str = "<train config>") -> TrainConfig:
    return validate_config(TrainConfig, data, source)


def load_train_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Load and validate a YAML train config; raises ConfigError with one line on any problem.

    Relative data paths are kept as written (resolved against the working directory, like the
    build config's output_dir).
    """
    return parse_train_config(read_yaml(path, overrides), str(path))
