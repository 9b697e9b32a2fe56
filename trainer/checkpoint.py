"""Resumable checkpoints: `accelerator.save_state` plus the step and each rank's data-loader state.

A checkpoint is `checkpoints/step-XXXXXXXX/`, written under a temporary name and renamed when
complete, so a run killed mid-save never leaves a half checkpoint that resume would pick. The
loader state is saved per rank (each rank streams its own slice) and read back with
`torch.load(weights_only=True)`; resume restores it instead of replaying batches.

With LoRA only the trainable (adapter) tensors go into the checkpoint, as safetensors, through
accelerate's save/load hooks: the frozen base is the pretrained model and is reloaded from it.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["checkpoint_dirs", "latest_checkpoint", "load_checkpoint", "register_trainable_only_hooks", "save_checkpoint"]

_NAME = re.compile(r"^step-(\d{8})$")
TRAINABLE_FILE = "trainable.safetensors"


def checkpoint_dirs(root: str | Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name))


def latest_checkpoint(root: str | Path) -> Path | None:
    found = checkpoint_dirs(root)
    return found[-1] if found else None


def step_of(path: Path) -> int:
    return int(_NAME.match(path.name).group(1))


def register_trainable_only_hooks(accelerator: Any, denoiser: nn.Module) -> None:
    """Make save_state/load_state store only the parameters that require grad (the LoRA adapters)."""
    from safetensors.torch import load_file, save_file

    def _is_ours(model: nn.Module) -> bool:
        return accelerator.unwrap_model(model) is denoiser

    def save_hook(models: list, weights: list, output_dir: str) -> None:
        for i in reversed(range(len(models))):
            if _is_ours(models[i]):
                if accelerator.is_main_process:
                    state = {n: p.detach().contiguous().cpu() for n, p in denoiser.named_parameters() if p.requires_grad}
                    save_file(state, os.path.join(output_dir, TRAINABLE_FILE))
                if weights:
                    weights.pop(i)

    def load_hook(models: list, input_dir: str) -> None:
        for i in reversed(range(len(models))):
            if _is_ours(models.pop(i)):
                path = os.path.join(input_dir, TRAINABLE_FILE)
                if not os.path.exists(path):
                    raise FileNotFoundError(f"{input_dir}: checkpoint has no {TRAINABLE_FILE} (not a LoRA checkpoint of this run?)")
                state = load_file(path)
                params = dict(denoiser.named_parameters())
                want = {n for n, p in params.items() if p.requires_grad}
                if set(state) != want:
                    missing, extra = sorted(want - set(state))[:3], sorted(set(state) - want)[:3]
                    raise ValueError(f"{path}: adapter tensors do not match the model (missing {missing}, unexpected {extra})")
                with torch.no_grad():
                    for n, t in state.items():
                        params[n].copy_(t)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def save_checkpoint(accelerator: Any, root: str | Path, step: int, loader_state: dict | None, keep: int | None) -> Path:
    """Write `root/step-XXXXXXXX` atomically (all ranks call this); prune to the newest `keep`."""
    root = Path(root)
    final = root / f"step-{step:08d}"
    tmp = root / f".step-{step:08d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    torch.save({"step": step, "loader": loader_state}, tmp / f"trainer_state-rank{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        if keep is not None:
            for old in checkpoint_dirs(root)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Any, path: str | Path) -> tuple[int, dict | None]:
    """Restore model/optimizer/scheduler/RNG state; return (step, this rank's loader state)."""
    path = Path(path)
    state_file = path / f"trainer_state-rank{accelerator.process_index}.pt"
    if not state_file.exists():
        raise FileNotFoundError(
            f"{path}: no {state_file.name}; was it written with a different number of processes?"
        )
    accelerator.load_state(str(path))
    state = torch.load(state_file, map_location="cpu", weights_only=True)
    if state.get("step") != step_of(path):
        raise ValueError(f"{state_file}: step {state.get('step')} does not match the folder name {path.name}")
    return int(state["step"]), state.get("loader")
