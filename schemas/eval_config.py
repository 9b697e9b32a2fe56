"""Typed configuration of `python cli.py eval`: which models, which prompts, which raters (docs/eval.md).

Strict like the build config: unknown keys and wrong types fail with one line naming the file and
the key. The scoring, judge, media, ray and failure sections are the build's own models, so an eval
scores exactly as a build does.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from schemas.categories import CATEGORIES
from schemas.config import (
    Dtype,
    FailureConfig,
    JudgeConfig,
    MediaConfig,
    RayConfig,
    ResourceConfig,
    ScoringConfig,
    Strict,
    validate_config,
)
from schemas.config_io import ConfigError, read_yaml
from schemas.train_config import RUN_CONFIG

MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
LORA_FILE = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes (cli.py train's final/)


class EvalModelConfig(Strict):
    """One model to generate with: a registry generator (optionally another checkpoint), plus trained
    weights on top, or a `cli.py train` run folder that names all of that itself."""

    name: str = Field(pattern=MODEL_NAME, description="Label in tables and the report (letters, digits, . _ -).")
    train_run: str | None = Field(
        None,
        description="A `cli.py train` output folder: generator and base checkpoint from its train_config.json, the "
        "trained weights from its final/ (LoRA or full denoiser). Excludes generator/lora/denoiser.",
    )
    generator: str | None = Field(None, description="Generator registry name (sd15, sdxl, tiny-sd15, ...); required without train_run.")
    model: str | None = Field(None, description="Hub id or local diffusers folder of the base checkpoint; default: the registry's.")
    lora: str | None = Field(
        None, description="Folder of LoRA weights loaded with the pipeline's load_lora_weights (cli.py train's final/)."
    )
    denoiser: str | None = Field(
        None, description="Folder of a full denoiser (a UNet or transformer save_pretrained folder) replacing the pipeline's."
    )
    dtype: Dtype | None = Field(None, description="Weights dtype; default: the registry's.")

    @model_validator(mode="after")
    def _one_source(self) -> EvalModelConfig:
        if self.train_run is not None:
            taken = [k for k in ("generator", "model", "lora", "denoiser") if getattr(self, k) is not None]
            if taken:
                raise ValueError(f"train_run: names its own generator and weights; remove {', '.join(taken)}")
        elif self.generator is None:
            raise ValueError("generator: required (or give train_run)")
        if self.lora is not None and self.denoiser is not None:
            raise ValueError("lora: give lora or denoiser, not both")
        return self


class EvalPromptsConfig(Strict):
    source: Literal["held_out", "file", "dataset"] = Field(
        "held_out",
        description="held_out: the prompt library's held-out split, which no build draws (docs/prompts.md); file: "
        "`files`; dataset: the prompts of a built dataset's `split` pairs.",
    )
    categories: dict[str, int] = Field(
        default_factory=dict,
        description="Prompts per category. held_out: required (e.g. {aesthetics: 100}); file/dataset: at most this "
        "many per category, a seeded sample (empty: every prompt).",
    )
    files: list[str] = Field(default_factory=list, description="source file: prompt files (txt, jsonl, csv, parquet; docs/prompts.md).")
    dataset: str | None = Field(None, description="source dataset: a build folder.")
    split: str = Field("test", pattern=r"^[a-z0-9_]+$", description="source dataset: the split whose prompts are used.")
    seed: int = Field(0, description="Order of the held-out prompts, and of the sample when a category is capped.")

    @field_validator("categories")
    @classmethod
    def _known(cls, value: dict[str, int]) -> dict[str, int]:
        for cat, n in value.items():
            if cat not in CATEGORIES:
                raise ValueError(f"unknown category {cat!r}; expected one of {list(CATEGORIES)}")
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"{cat}: expected a positive number of prompts, got {n!r}")
        return value

    @model_validator(mode="after")
    def _complete(self) -> EvalPromptsConfig:
        if self.source == "held_out" and not self.categories:
            raise ValueError("categories: the held_out source needs prompts per category, e.g. {aesthetics: 50}")
        if self.source == "file" and not self.files:
            raise ValueError("files: the file source needs at least one prompt file")
        if self.source == "dataset" and not self.dataset:
            raise ValueError("dataset: the dataset source needs a build folder")
        return self


class BootstrapConfig(Strict):
    resamples: int = Field(2000, ge=100, description="Bootstrap resamples per interval (prompts are resampled, seeds move with them).")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Interval coverage.")
    seed: int = Field(0, description="Seed of the resampling.")


class EvalReportConfig(Strict):
    examples: int = Field(8, ge=0, description="Prompts shown side by side (base, then each candidate) in report.html.")
    frames: int = Field(4, ge=1, description="Frames in a video's strip in the report.")


class EvalConfig(Strict):
    name: str = Field("vipo-eval", description="Title of the report.")
    output_dir: str = Field("./vipo-eval", description="Eval folder: tables, media, scores.parquet, summary.json, report.html.")
    base: EvalModelConfig = Field(description="The model the candidates are compared with.")
    candidates: list[EvalModelConfig] = Field(min_length=1, description="Models to compare with the base.")
    prompts: EvalPromptsConfig = Field(description="Which prompts.")
    seeds_per_prompt: int = Field(
        2, ge=1, description="Seeds per prompt; every model renders each prompt with the same seeds (paired comparison)."
    )
    sampling: dict[str, Any] = Field(
        default_factory=dict,
        description="Pipeline call arguments for every model (steps, guidance, size), over each generator's registry defaults.",
    )
    generation: ResourceConfig = Field(default_factory=ResourceConfig, description="Actor pool of each model's generation.")
    scoring: ScoringConfig = Field(description="Reward models scoring every image / video (as in a build).")
    judge: JudgeConfig | None = Field(
        None, description="VLM rater: pairwise verdict candidate vs base (both orders) and the alignment figure; None skips both."
    )
    alignment: bool = Field(True, description="With a judge: VQAScore-style P('Yes') alignment of every image / video.")
    bootstrap: BootstrapConfig = Field(default_factory=BootstrapConfig, description="Intervals.")
    report: EvalReportConfig = Field(default_factory=EvalReportConfig, description="report.html.")
    media: MediaConfig = Field(default_factory=MediaConfig, description="Media encoding.")
    ray: RayConfig = Field(default_factory=RayConfig, description="Where the stages run.")
    failures: FailureConfig = Field(default_factory=FailureConfig, description="When item failures stop a stage.")
    cache_dir: str | None = Field(None, description="Where tiny models are materialised; default ~/.cache/vipo.")

    @model_validator(mode="after")
    def _distinct(self) -> EvalConfig:
        names = [self.base.name] + [c.name for c in self.candidates]
        if len(set(names)) != len(names):
            raise ValueError(f"candidates: model names must be distinct (the base's included), got {names}")
        scorers = [r.name for r in self.scoring.reward_models]
        if len(set(scorers)) != len(scorers):
            raise ValueError(f"scoring.reward_models: duplicate names {scorers}")
        return self

    @property
    def models(self) -> list[EvalModelConfig]:
        """The base first, then the candidates."""
        return [self.base, *self.candidates]


def _model_from_flag(value: str, like: dict, name: str) -> dict:
    """An EvalModelConfig mapping from a command-line value: a `cli.py train` folder, a LoRA folder, a
    denoiser folder, a diffusers folder or hub id (on `like`'s generator), or a registry name."""
    path = Path(value)
    if (path / RUN_CONFIG).is_file():
        return {"name": name, "train_run": value}
    keep = {k: like[k] for k in ("generator", "model", "dtype") if like.get(k) is not None}
    if (path / LORA_FILE).is_file():
        return {**keep, "name": name, "lora": value}
    if (path / "config.json").is_file() and not (path / "model_index.json").is_file():
        return {**keep, "name": name, "denoiser": value}
    if path.exists() or "/" in value:
        return {**{k: v for k, v in keep.items() if k != "model"}, "name": name, "model": value}
    return {"name": name, "generator": value}


def _flag_name(value: str, taken: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(value.rstrip("/")).name or value).strip("-._") or "candidate"
    name, k = stem[:60], 2
    while name in taken:
        name, k = f"{stem[:56]}-{k}", k + 1
    return name


def apply_flags(data: Any, *, base: str | None = None, candidates: list[str] | None = None,
                prompts: str | None = None, out: str | None = None) -> Any:
    """The config's plain data with the command line's `--base`, `--candidate` (replacing the config's
    candidates), `--prompts` (held_out, a prompt file, or a build folder) and `--out` applied."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    base_cfg = dict(data.get("base") or {})
    if base is not None:
        base_cfg = _model_from_flag(base, base_cfg, base_cfg.get("name", "base"))
        data["base"] = base_cfg
    if candidates:
        taken = {base_cfg.get("name", "base")}
        made = []
        for value in candidates:
            made.append(_model_from_flag(value, base_cfg, _flag_name(value, taken)))
            taken.add(made[-1]["name"])
        data["candidates"] = made
    if prompts is not None:
        p = {k: v for k, v in dict(data.get("prompts") or {}).items() if k in ("categories", "seed", "split")}
        if prompts == "held_out":
            p["source"] = "held_out"
        elif Path(prompts).is_dir():
            p.update(source="dataset", dataset=prompts)
        else:
            p.update(source="file", files=[prompts])
        data["prompts"] = p
    if out is not None:
        data["output_dir"] = out
    return data


def parse_eval_config(data: Any, source: str = "<config>") -> EvalConfig:
    return validate_config(EvalConfig, data, source)


def load_eval_config(path: str | Path, overrides: dict[str, Any] | None = None) -> EvalConfig:
    """Load and validate a YAML eval config; ConfigError with one line on any problem."""
    return parse_eval_config(read_yaml(path, overrides), str(path))


__all__ = ["ConfigError", "EvalConfig", "EvalModelConfig", "EvalPromptsConfig", "load_eval_config", "parse_eval_config"]
