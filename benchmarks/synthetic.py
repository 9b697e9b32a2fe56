"""Model-free stand-ins for the build's model stages, for benchmarks of the executor and the columnar
stages (benchmarks/build_scale.py): the very same stage graph (`pipeline.build.Build`), with

  * `SyntheticGenerateStage`: no diffusers pipeline; each candidate's pixels are a deterministic function
    of its `seed` (a colour gradient plus noise, from numpy's default_rng(seed)), so a rerun makes the
    same bytes, like a real generator. Media encoding, pHash, atomic writes and parquet rows are the
    stage's own code.
  * `SyntheticScoreStage`: no reward models; each of the five reward-model names scores an image with a
    different statistic of its pixels (red mean, contrast, saturation, sharpness, exposure), so the
    "models" agree on some pairs and not on others. Media reading and decoding are the stage's own.
  * `SyntheticJudgeStage`: no VLM; the rater's backend answers each query with label log-probabilities
    from the two images' saturation (a softmax over the pair), so the real `VLMRater` (both orders,
    swap-debiasing, position consistency) and the stage's media reading, batching and rows are timed.
  * `SyntheticBuild`: `Build` with those three classes, and no tiny models materialised.

Nothing here is in the generator registry or in a preset: configs name the generators `synthetic-*`
with `model: synthetic` (see `synthetic_config`).
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import numpy as np

from pipeline.build import Build
from pipeline.generate import GenerateStage
from pipeline.judge import JudgeStage
from pipeline.score import ScoreStage
from schemas.categories import IMAGE_CATEGORIES
from schemas.tables import REWARD_MODEL_NAMES

SYNTHETIC_MODEL = "synthetic"
SIDE = 32  # px: small media, so the build's own costs (not pixels) dominate


@functools.lru_cache(maxsize=8)
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32) / max(1, max(height, width) - 1)
    return x[..., None], y[..., None]


def synthetic_pixels(seed: int, height: int = SIDE, width: int = SIDE, noise: float = 20.0) -> np.ndarray:
    """uint8 (height, width, 3): a random-direction colour gradient plus seeded noise of random strength."""
    rng = np.random.default_rng(int(seed))
    x, y = _grid(height, width)
    a, b, c = rng.uniform(-1, 1, (3, 3)).astype(np.float32)
    amp = noise * rng.uniform(0.2, 2.0)
    base = (a * x + b * y + (c + 1)) * np.float32(127.5) + rng.standard_normal((height, width, 3), np.float32) * np.float32(amp)
    return np.clip(base, 0, 255).astype(np.uint8)


@dataclass
class SyntheticGenerateStage(GenerateStage):
    """The generate stage with pixels from each task's seed instead of a diffusion model."""

    def setup(self) -> None:
        self.pipe = None
        # generators differ a little (the second is noisier), so the winner-generator report has content
        self._noise = 20.0 + 10.0 * (sum(map(ord, self.gcfg.name)) % 3)

    def _render(self, tasks: list[dict]) -> list[np.ndarray]:
        params = json.loads(tasks[0]["params"])
        h, w = int(params.get("height", SIDE)), int(params.get("width", SIDE))
        return [synthetic_pixels(t["seed"], h, w, self._noise) for t in tasks]


def _stats(img) -> tuple[np.ndarray, np.ndarray]:
    arr = np.asarray(img, dtype=np.float32)
    return arr, arr @ np.array([0.299, 0.587, 0.114], np.float32)


def _red(arr, luma):
    return arr[..., 0].mean() / 255.0


def _contrast(arr, luma):
    return luma.std() / 128.0


def _saturation(arr, luma):
    return (arr.max(axis=-1) - arr.min(axis=-1)).mean() / 255.0


def _sharpness(arr, luma):
    return np.abs(np.diff(luma, axis=1)).mean() / 64.0


def _exposure(arr, luma):
    return 1.0 - abs(luma.mean() - 128.0) / 128.0


PIXEL_STATS = dict(zip(REWARD_MODEL_NAMES, (_red, _contrast, _saturation, _sharpness, _exposure)))


class PixelStatModel:
    """A 'reward model' that scores an image by one statistic of its pixels (model-free, deterministic)."""

    def __init__(self, name: str):
        self.name, self.fn = name, PIXEL_STATS[name]

    def score(self, images, prompts=None) -> np.ndarray:
        return np.array([self.fn(*_stats(im)) for im in images], np.float32)

    def score_video(self, videos, prompts=None) -> np.ndarray:
        return np.array([np.mean([self.fn(*_stats(f)) for f in frames]) for frames in videos], np.float32)


@dataclass
class SyntheticScoreStage(ScoreStage):
    """The score stage with pixel statistics instead of reward models."""

    def setup(self) -> None:
        self.loaded = {name: PixelStatModel(name) for name, *_ in self.models}


class SaturationBackend:
    """A `LabelBackend` without a model: (log P("A"), log P("B")) = log-softmax of the two candidates'
    mean saturation, scaled so that clear differences give confident answers."""

    scale = 20.0

    def label_logprobs(self, queries) -> list[tuple[float, float]]:
        from reward_models.vlm.prompting import images_of

        out = []
        for parts in queries:
            images = images_of(parts)
            half = len(images) // 2
            a, b = (self.scale * float(np.mean([_saturation(*_stats(im)) for im in side]))
                    for side in (images[:half], images[half:]))
            top = max(a, b)
            norm = top + float(np.log(np.exp(a - top) + np.exp(b - top)))
            out.append((a - norm, b - norm))
        return out


@dataclass
class SyntheticJudgeStage(JudgeStage):
    """The judge stage with the real `VLMRater` on a model-free backend."""

    def setup(self) -> None:
        from reward_models.vlm.rater import VLMRater

        self.rater = VLMRater(SaturationBackend(), name=SYNTHETIC_MODEL, image_size=self.cfg.image_size)


class SyntheticBuild(Build):
    """`Build` on the model-free stand-ins: same graph, same executor, same tables."""

    generate_stage = SyntheticGenerateStage
    score_stage = SyntheticScoreStage
    judge_stage = SyntheticJudgeStage

    def generator_path(self, spec) -> str:
        return SYNTHETIC_MODEL

    def reward_model_path(self, r) -> str:
        return SYNTHETIC_MODEL

    def rater_model_path(self, cfg) -> str:
        return SYNTHETIC_MODEL


def synthetic_config(
    candidates: int,
    output_dir: str,
    *,
    generators: int = 2,
    seeds_per_prompt: int = 4,
    categories: tuple[str, ...] = IMAGE_CATEGORIES,
    batch_size: int = 32,
    batches_per_unit: int = 32,
    quota_share: float = 0.1,
    num_cpus: int = 2,
    num_actors: int = 2,
) -> dict:
    """A build config dict of about `candidates` candidates (prompts x seeds x 1 setting x generators),
    spread evenly over `categories`, on the synthetic generators and scorers."""
    per_prompt = generators * seeds_per_prompt
    prompts = max(1, round(candidates / per_prompt / len(categories)))
    resources = {"num_gpus": 0, "num_cpus": 1, "num_actors": num_actors, "batch_size": batch_size,
                 "batches_per_unit": batches_per_unit}
    return {
        "name": f"vipo-synthetic-{candidates}",
        "output_dir": output_dir,
        "seed": 0,
        "categories": {c: {"prompts": prompts, "quota": max(1, round(quota_share * prompts))} for c in categories},
        "generators": [
            {"name": f"synthetic-{chr(97 + i)}", "model": SYNTHETIC_MODEL, "pipeline_class": "StableDiffusionPipeline",
             "modality": "image", "seeds_per_prompt": seeds_per_prompt, "call_kwargs": {"height": SIDE, "width": SIDE},
             "sampling": [{}], "resources": resources}
            for i in range(generators)
        ],
        "scoring": {"reward_models": [{"name": n, "model": SYNTHETIC_MODEL} for n in REWARD_MODEL_NAMES],
                    "resources": resources},
        "pairing": {"quorum": 4, "min_margin": 0.1, "max_pairs_per_prompt": 4},
        "shards": {"samples_per_shard": 1000},
        "judge": {"model": SYNTHETIC_MODEL, "image_size": SIDE, "min_probability": 0.3, "resources": resources},
        "ray": {"num_cpus": num_cpus, "columnar": "auto"},
    }
