"""Where model weights come from: a hub id, a local folder, or a tiny twin built offline and cached.

Tiny twins are built once, saved with `save_pretrained` into the cache and then loaded by the actors
through the very same `from_pretrained(path)` call a real checkpoint takes. The cache key includes a
hash of the builder's source, so editing a tiny config never serves stale weights.
"""
from __future__ import annotations

import hashlib
import inspect
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

TINY = "tiny"


def default_cache_dir() -> Path:
    return Path(os.environ.get("VIPO_CACHE", Path.home() / ".cache" / "vipo"))


def _source_hash(*objs: object) -> str:
    h = hashlib.sha256()
    for obj in objs:
        h.update(inspect.getsource(inspect.getmodule(obj)).encode())
    return h.hexdigest()[:10]


def quiet_hf_progress() -> None:
    """diffusers' / transformers' own loading bars would tear through our rich progress display."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def materialise_tiny(kind: str, name: str, seed: int, save: Callable[[str], None], source: object, cache_dir: Path) -> str:
    """Return the folder of a tiny model, building it with `save(folder)` the first time."""
    folder = Path(cache_dir) / "tiny" / f"{kind}-{name}-s{seed}-{_source_hash(source)}"
    if folder.exists():
        return str(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent)
    try:
        quiet_hf_progress()
        save(tmp)
        os.replace(tmp, folder)
    except OSError:
        if not folder.exists():  # another process may have won the race; its folder is as good as ours
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(folder)


def generator_path(spec, cache_dir: Path) -> str:
    """Model folder or hub id of a resolved generator."""
    if spec.model != TINY:
        return spec.model
    from pipeline import tiny_generators

    def save(folder: str) -> None:
        tiny_generators.build_tiny(spec.family, seed=0).save_pretrained(folder)

    return materialise_tiny("generator", spec.family, 0, save, tiny_generators.build_tiny, cache_dir)


def reward_model_path(name: str, model: str, cache_dir: Path) -> str:
    """Checkpoint folder or hub id of a reward model."""
    if model != TINY:
        return model
    from reward_models.registry import reward_model_class

    cls = reward_model_class(name)
    seed = int(hashlib.sha256(name.encode()).hexdigest()[:4], 16) % 1000

    def save(folder: str) -> None:
        cls.tiny(seed).save_pretrained(folder)

    return materialise_tiny("reward", name, seed, save, cls, cache_dir)
