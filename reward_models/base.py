"""The reward-model protocol and the checkpoint plumbing every scorer shares.

All scorers answer `score(images, prompts) -> float32 (n,)`, higher is better. The pipeline only ever
sees this protocol, so a new scorer is a subclass plus a registry entry. Checkpoints are read with
safetensors or `torch.load(weights_only=True)` (never a full pickle) and key mismatches are errors that
name the keys: a silently half-loaded reward model produces plausible-looking garbage scores.
"""
from __future__ import annotations

import abc
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from schemas.errors import VipoError


class CheckpointKeyError(VipoError, ValueError):
    """A checkpoint whose keys do not match the model it is loaded into."""


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """Accept `torch.float16` or the config spelling `"float16"`."""
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}")
    return value


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` file or of a torch checkpoint loaded with `weights_only=True`.

    A torch checkpoint may be a bare state dict or a dict holding it under `"state_dict"` (HPSv2)."""
    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointKeyError(f"{path}: expected a state dict, got {type(obj).__name__}")
    bad = sorted(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise CheckpointKeyError(f"{path}: non-tensor entries in the state dict: {bad}")
    return obj


def raise_on_key_mismatch(missing: Iterable[str], unexpected: Iterable[str], source: str) -> None:
    """Raise `CheckpointKeyError` naming every missing and unexpected key (if any)."""
    missing, unexpected = sorted(missing), sorted(unexpected)
    if missing or unexpected:
        raise CheckpointKeyError(f"{source}: checkpoint does not match the model; missing keys {missing}, unexpected keys {unexpected}")


def load_state_dict_checked(module: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """`module.load_state_dict(strict=True)`, but with an error that lists the offending keys."""
    expected = set(module.state_dict())
    raise_on_key_mismatch(expected - set(state_dict), set(state_dict) - expected, source)
    module.load_state_dict(state_dict, strict=True)


def read_json(path: str | os.PathLike) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def local_or_hub_file(path_or_id: str, filename: str) -> str | None:
    """`path_or_id/filename` when `path_or_id` is a local folder (None when the file is not there);
    otherwise the file downloaded from that hub repository (which fails offline)."""
    if os.path.isdir(path_or_id):
        candidate = os.path.join(path_or_id, filename)
        return candidate if os.path.isfile(candidate) else None
    from huggingface_hub import hf_hub_download

    return hf_hub_download(path_or_id, filename)


class LinearHead(nn.Module):
    """The MLP head of the LAION aesthetic predictor, reused verbatim by ImageReward:
    d -> 1024 -> 128 -> 64 -> 16 -> 1 with dropouts and NO activations (both published models
    commented the ReLUs out). Keys `layers.{0,2,4,6,7}.*` match the published checkpoints."""

    def __init__(self, in_features: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_features, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _as_pil(frame: Any) -> Image.Image:
    return frame if isinstance(frame, Image.Image) else Image.fromarray(np.asarray(frame, dtype=np.uint8))


class RewardModel(abc.ABC):
    """One scorer. Construct it once (in a Ray actor's setup), then call `score` per batch."""

    name: str
    batch_size: int = 16
    uses_prompts: bool = True
    device: torch.device
    dtype: torch.dtype

    @abc.abstractmethod
    def _score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        """Scores of at most `batch_size` (image, prompt) pairs as a 1-D tensor."""

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str] | None) -> np.ndarray:
        """float32 scores, shape (n,), higher is better; one prompt per image."""
        images = [_as_pil(im) for im in images]
        if prompts is None:
            if self.uses_prompts:
                raise ValueError(f"{self.name} needs one prompt per image")
            prompts = [""] * len(images)
        if len(prompts) != len(images):
            raise ValueError(f"{self.name}: {len(images)} images but {len(prompts)} prompts")
        out: list[torch.Tensor] = []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                batch = self._score_batch(images[i : i + self.batch_size], list(prompts[i : i + self.batch_size]))
                out.append(batch.reshape(-1).float().cpu())
        return torch.cat(out).numpy().astype(np.float32) if out else np.zeros(0, dtype=np.float32)

    def score_video(self, videos: Sequence[Sequence[Image.Image]], prompts: Sequence[str] | None) -> np.ndarray:
        """Mean image score over each video's frames (frames of all videos go through one `score`)."""
        counts = [len(v) for v in videos]
        if any(c == 0 for c in counts):
            raise ValueError(f"{self.name}: a video with no frames")
        if prompts is not None and len(prompts) != len(videos):
            raise ValueError(f"{self.name}: {len(videos)} videos but {len(prompts)} prompts")
        frames = [f for v in videos for f in v]
        frame_prompts = None if prompts is None else [p for v, p in zip(videos, prompts) for _ in v]
        scores = self.score(frames, frame_prompts)
        bounds = np.cumsum(counts)[:-1]
        return np.array([seg.mean() for seg in np.split(scores, bounds)], dtype=np.float32)

    @classmethod
    @abc.abstractmethod
    def from_pretrained(cls, path: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> RewardModel:
        """Load the published checkpoint (hub id or local folder) or a folder written by `save_pretrained`."""

    @classmethod
    @abc.abstractmethod
    def tiny(cls, seed: int = 0) -> RewardModel:
        """The same architecture at toy size, random weights, offline, deterministic in `seed`."""

    @abc.abstractmethod
    def save_pretrained(self, path: str) -> None:
        """Write a folder that `from_pretrained(path)` loads back."""
