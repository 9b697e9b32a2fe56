"""Name -> reward-model class, for the five names of `schemas.tables.REWARD_MODEL_NAMES`."""
from __future__ import annotations

from collections.abc import Iterable

import torch

from schemas.tables import REWARD_MODEL_NAMES

from .aesthetic import AestheticScore
from .base import RewardModel, as_dtype
from .clipscore import CLIPScore
from .hpsv21 import HPSv21
from .imagereward import ImageReward
from .pickscore import PickScore

REWARD_MODELS: dict[str, type[RewardModel]] = {
    cls.name: cls for cls in (PickScore, HPSv21, ImageReward, CLIPScore, AestheticScore)
}
assert tuple(REWARD_MODELS) == REWARD_MODEL_NAMES, "registry and schemas.tables.REWARD_MODEL_NAMES disagree"


def reward_model_class(name: str) -> type[RewardModel]:
    try:
        return REWARD_MODELS[name]
    except KeyError:
        raise ValueError(f"unknown reward model {name!r}; expected one of {list(REWARD_MODELS)}") from None


def load_reward_model(name: str, model: str = "tiny", device: str = "cpu", dtype: torch.dtype | str = torch.float32) -> RewardModel:
    """One model by hand: `model="tiny"` builds the offline toy twin (seed 0, CPU fp32) in memory, anything
    else is a hub id or folder for `from_pretrained`."""
    cls = reward_model_class(name)
    return cls.tiny(0) if model == "tiny" else cls.from_pretrained(model, device=device, dtype=as_dtype(dtype))


def load_reward_models(models: Iterable[tuple[str, str, str, dict]], device: str) -> dict[str, RewardModel]:
    """A score actor's setup (build and audit alike): each (name, hub id or folder, dtype name, extra
    `from_pretrained` options) loaded once, in order."""
    return {
        name: reward_model_class(name).from_pretrained(path, device=device, dtype=getattr(torch, dtype), **options)
        for name, path, dtype, options in models
    }
