"""Checks, before any stage runs, that each configured model can be found (docs/reliability.md, "Preflight").

A model is `tiny` (built offline), a local folder, or a hub id (`org/name`). A local path that does
not exist, or a folder that is not the kind of checkpoint asked for, is refused with one line naming
the config key — instead of a Ray traceback after the stages before it have run for an hour. A hub
id is checked against the local hub cache only when the hub is off (`HF_HUB_OFFLINE=1`); online,
the download is the check.
"""
from __future__ import annotations

import os
from pathlib import Path

from schemas.config_io import ConfigError

# what a folder of each kind must hold (None: any folder or file the loader accepts)
MARKER = {"generator": "model_index.json", "rater": "config.json", "reward model": None}


def looks_local(value: str) -> bool:
    """A path rather than a hub id: absolute, relative with ./ or ../, ~, more than one '/', or present on disk."""
    return value.startswith(("/", "./", "../", "~", ".\\")) or value.count("/") > 1 or Path(value).expanduser().exists()


def check_model_source(value: str, key: str, kind: str) -> None:
    """ConfigError `<key>: <value>: <why>` when `value` cannot name a model of `kind`."""
    if value == "tiny":
        return
    marker = MARKER[kind]
    if looks_local(value):
        path = Path(value).expanduser()
        if not path.exists():
            raise ConfigError(f"{key}: {value}: no such file or folder (a hub id looks like org/name)")
        if marker and not (path / marker).is_file():
            raise ConfigError(f"{key}: {value}: not a {kind} folder (no {marker} in it)")
        return
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") and marker:
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(value, marker), str):
            raise ConfigError(f"{key}: {value}: not in the local hub cache and HF_HUB_OFFLINE is set")


def check_reward_models(reward_models: list, source: str, key: str = "reward_models") -> None:
    """Every configured reward model's source (`<source>: <key>.<i>.model: ...`)."""
    for i, r in enumerate(reward_models):
        check_model_source(r.model, f"{source}: {key}.{i}.model", "reward model")
