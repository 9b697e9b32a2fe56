"""The models an eval compares: each a generator spec, the checkpoint it loads, and trained weights on top.

A `cli.py train` run folder names all three itself (train_config.json, final/). The weights' content
fingerprint is part of every generate unit's id, so retraining into the same folder regenerates
that model's media on the next eval run, and nothing else.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.model_sources import check_model_source
from schemas.config import GeneratorConfig
from schemas.config_io import ConfigError
from schemas.eval_config import LORA_FILE, EvalModelConfig
from schemas.train_config import RUN_CONFIG

_DENOISERS = ("unet", "transformer")
_HASH_WHOLE = 256 * 2**20  # files up to this are hashed whole; larger ones by name, size and mtime


@dataclass(frozen=True)
class EvalModel:
    """A resolved model: `spec` (pipeline.generators.GeneratorSpec) loaded from `spec.model`, then
    `lora` or `denoiser` applied. `weights` fingerprints what is applied ("" when nothing)."""

    name: str
    spec: Any
    lora: str | None = None
    denoiser: str | None = None
    weights: str = ""

    def describe(self) -> dict:
        return {"name": self.name, "generator": self.spec.name, "model": self.spec.model,
                "weights": self.lora or self.denoiser}


def _train_run(cfg: EvalModelConfig, where: str) -> dict:
    """generator, model, lora / denoiser of a `cli.py train` output folder."""
    run = Path(cfg.train_run)
    meta = run / RUN_CONFIG
    if not meta.is_file():
        raise ConfigError(f"{where}.train_run: {run}: no {RUN_CONFIG} (is it a `cli.py train` output folder?)")
    try:
        model = json.loads(meta.read_text())["model"]
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{where}.train_run: {meta}: unreadable ({type(err).__name__}: {err})") from None
    final = run / "final"
    out = {"generator": model["generator"], "model": model.get("path"), "lora": None, "denoiser": None}
    if (final / LORA_FILE).is_file():
        out["lora"] = str(final)
    elif any((final / d / "config.json").is_file() for d in _DENOISERS):
        out["denoiser"] = str(next(final / d for d in _DENOISERS if (final / d / "config.json").is_file()))
    else:
        raise ConfigError(f"{where}.train_run: {run}: no final/ weights ({LORA_FILE} or a denoiser folder); did the run finish?")
    return out


def weights_fingerprint(folder: str) -> str:
    """16 hex of the weights' content (small files whole; large ones by name, size and mtime)."""
    h = hashlib.sha256()
    root = Path(folder)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        st = path.stat()
        h.update(f"{path.relative_to(root)}\0{st.st_size}\0".encode())
        if st.st_size <= _HASH_WHOLE:
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        else:
            h.update(str(st.st_mtime_ns).encode())
    return h.hexdigest()[:16]


def resolve_model(cfg: EvalModelConfig, where: str) -> EvalModel:
    """One model of the config, checked (paths exist, the generator is known); ConfigError naming `where`."""
    from pipeline.generators import resolve_generator

    fields = _train_run(cfg, where) if cfg.train_run else {
        "generator": cfg.generator, "model": cfg.model, "lora": cfg.lora, "denoiser": cfg.denoiser}
    gcfg: dict[str, Any] = {"name": fields["generator"], "model": fields["model"]}
    if cfg.dtype is not None:
        gcfg["dtype"] = cfg.dtype
    try:
        spec = resolve_generator(GeneratorConfig(**gcfg))
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None
    check_model_source(spec.model, f"{where}.model", "generator")
    weights = ""
    for key in ("lora", "denoiser"):
        folder = fields[key]
        if folder is None:
            continue
        path = Path(folder)
        if not path.is_dir():
            raise ConfigError(f"{where}.{key}: {folder}: no such folder")
        if key == "lora" and not (path / LORA_FILE).is_file():
            raise ConfigError(f"{where}.lora: {folder}: no {LORA_FILE} (the folder cli.py train writes as final/)")
        if key == "denoiser" and not (path / "config.json").is_file():
            raise ConfigError(f"{where}.denoiser: {folder}: no config.json (a UNet / transformer save_pretrained folder)")
        weights = f"{key}:{weights_fingerprint(folder)}"
    return EvalModel(cfg.name, spec, fields["lora"], fields["denoiser"], weights)


def apply_weights(pipe: Any, model: EvalModel) -> Any:
    """Load `model`'s trained weights into a loaded pipeline: the LoRA through diffusers' own
    `load_lora_weights`, a full denoiser with the class and dtype of the one it replaces."""
    if model.lora:
        pipe.load_lora_weights(model.lora)
    elif model.denoiser:
        attr = next(a for a in _DENOISERS if getattr(pipe, a, None) is not None)
        current = getattr(pipe, attr)
        replacement = type(current).from_pretrained(model.denoiser, dtype=current.dtype)
        setattr(pipe, attr, replacement.to(current.device))
    return pipe
