"""Typed build configuration, loaded from YAML and validated before anything is written.

Every field carries its help text; a bad file fails with one line naming the file and the key.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from schemas.categories import CATEGORIES, Modality
from schemas.config_io import ConfigError, read_yaml
from schemas.tables import REWARD_MODEL_NAMES

Dtype = Literal["float32", "float16", "bfloat16"]


class Strict(BaseModel):
    """Config models refuse unknown keys (a typo is an error, not a silent default) and are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, value: Any, info: ValidationInfo) -> Any:
        """pydantic's lax mode reads `true` as 1 for a number field; in a config that is a typo."""
        if isinstance(value, bool) and info.field_name and _is_number(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"expected a number, got the boolean {str(value).lower()}")
        return value


def _is_number(annotation: Any) -> bool:
    """int or float, possibly optional or in a union with other non-bool types."""
    if annotation in (int, float):
        return True
    args = get_args(annotation)
    return bool(args) and bool not in args and any(a in (int, float) for a in args)


class CategoryConfig(Strict):
    quota: int = Field(ge=1, description="Pairs of this category to select into the dataset.")
    prompts: int = Field(ge=1, description="Prompts to draw from the library for this category.")


class ResourceConfig(Strict):
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor (0 runs on CPU).")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per actor.")
    num_actors: int = Field(1, ge=1, description="Actors in the pool.")
    batch_size: int = Field(4, ge=1, description="Items per model call.")
    batches_per_unit: int = Field(
        8, ge=1, description="Model calls per work unit: a unit is the grain of scheduling, resume and retry."
    )


class GeneratorConfig(Strict):
    name: str = Field(description="Registry name (sd15, sdxl, flux-dev, wan21-1.3b, tiny-sd15, ...) or a new name.")
    model: str | None = Field(
        None, description="Hub id or local folder; 'tiny' builds the family's toy twin offline. Default: the registry's."
    )
    pipeline_class: str | None = Field(None, description="diffusers pipeline class; default: the registry's.")
    modality: Modality | None = Field(None, description="image or video; default: the registry's.")
    dtype: Dtype = Field("float32", description="Weights dtype.")
    seeds_per_prompt: int = Field(2, ge=1, description="Seeds per prompt and sampling setting.")
    sampling: list[dict[str, Any]] = Field(
        default_factory=lambda: [{}],
        description="Sampling settings crossed with seeds (e.g. steps, guidance); each becomes part of the candidate id.",
    )
    call_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Fixed pipeline call arguments (height, width, num_frames, ...)."
    )
    categories: list[str] | None = Field(None, description="Categories this generator serves; default: all of its modality.")
    resources: ResourceConfig = Field(default_factory=ResourceConfig, description="Actor pool of this generator.")


class RewardModelConfig(Strict):
    name: str = Field(description=f"One of {', '.join(REWARD_MODEL_NAMES)}.")
    model: str = Field("tiny", description="Hub id or local folder of the checkpoint; 'tiny' builds a toy twin offline.")
    dtype: Dtype = Field("float32", description="Weights dtype.")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra from_pretrained arguments, e.g. pickscore's `processor` or aesthetic's `mlp_path`.",
    )

    @model_validator(mode="after")
    def _known(self) -> RewardModelConfig:
        if self.name not in REWARD_MODEL_NAMES:
            raise ValueError(f"unknown reward model {self.name!r}; expected one of {list(REWARD_MODEL_NAMES)}")
        return self


class ScoreGroupConfig(Strict):
    models: list[str] = Field(min_length=1, description="Reward models sharing one actor pool (media decoded once for them).")
    resources: ResourceConfig = Field(default_factory=ResourceConfig, description="This group's actor pool.")


class ScoringConfig(Strict):
    reward_models: list[RewardModelConfig] = Field(min_length=1, description="Reward models scoring every candidate.")
    video_frames: int = Field(
        4, ge=2,
        description="Frames sampled per video for the image rewards (and subject consistency); the temporal metrics "
        "read every native frame (docs/video_metrics.md).",
    )
    resources: ResourceConfig = Field(default_factory=ResourceConfig, description="Score actor pool (all models per actor).")
    groups: list[ScoreGroupConfig] = Field(
        default_factory=list,
        description="Split the reward models over several actor pools (e.g. one GPU each); default: one pool for all.",
    )

    @model_validator(mode="after")
    def _groups_cover_models(self) -> ScoringConfig:
        if self.groups:
            named = [m for g in self.groups for m in g.models]
            configured = [r.name for r in self.reward_models]
            if sorted(named) != sorted(configured):
                raise ValueError(f"groups: must name each of {configured} exactly once, got {named}")
        return self

    def pool_resources(self) -> list[tuple[str, ResourceConfig]]:
        """(key under `scoring`, resources) of each actor pool, in config order, for error messages."""
        if not self.groups:
            return [("resources", self.resources)]
        return [(f"groups.{i}.resources", g.resources) for i, g in enumerate(self.groups)]

    def model_groups(self) -> list[tuple[list[RewardModelConfig], ResourceConfig]]:
        """(models, resources) per actor pool, in config order."""
        if not self.groups:
            return [(list(self.reward_models), self.resources)]
        by_name = {r.name: r for r in self.reward_models}
        return [([by_name[m] for m in g.models], g.resources) for g in self.groups]


class PairingConfig(Strict):
    quorum: int | None = Field(None, ge=1, description="Reward models that must prefer the winner; default: all.")
    min_margin: float = Field(
        0.0, ge=0, description="Minimum |score difference| / group std per scorer for it to count as a vote (ties)."
    )
    max_pairs_per_prompt: int = Field(4, ge=1, description="Most pairs selected from one prompt group.")
    max_margin: float | None = Field(
        None,
        gt=0,
        description="Too-easy guard: drop a pair when every agreeing scorer's normalised margin exceeds this "
        "(reason too_easy); None keeps them.",
    )
    near_duplicate_bits: int | None = Field(
        4,
        ge=0,
        le=64,
        description="Drop a pair whose winner and loser 64-bit pHashes differ in at most this many bits "
        "(mean over the hashed frames for video; reason near_duplicate); None keeps them.",
    )


class SelectionConfig(Strict):
    max_winner_generator_share: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Most of a category's selected pairs one generator may win; a hard cap (short quota is "
        "reported, never filled past it). None: no cap.",
    )


class JudgeConfig(Strict):
    """The VLM rater asked about pairs that passed the reward-model rule (docs/vlm_rater.md)."""

    backend: Literal["transformers", "vllm", "openai"] = Field(
        "transformers", description="transformers (CPU/GPU), vllm (offline engine, GPU) or openai (any compatible server)."
    )
    model: str = Field("tiny", description="Hub id or local folder (Qwen2-VL / Qwen2.5-VL family); 'tiny' builds a toy one.")
    dtype: Dtype = Field("float32", description="Weights dtype.")
    base_url: str | None = Field(None, description="openai backend: server URL, e.g. http://localhost:8000/v1.")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai backend: environment variable holding the key.")
    timeout_s: float = Field(60.0, gt=0, description="openai backend: seconds per request.")
    max_retries: int = Field(3, ge=0, description="openai backend: retries per request.")
    min_probability: float = Field(0.5, ge=0, le=1, description="Keep a pair when P(winner better) >= this.")
    min_position_consistency: float = Field(
        0.0, ge=0, le=1, description="Keep a pair when 1 - |P(A|a,b) - (1 - P(A|b,a))| >= this."
    )
    video_frames: int = Field(
        4, ge=1,
        description="Frames per video shown to the rater; a video pair is 2 x video_frames images per query "
        "(vllm's limit_mm_per_prompt is set to that; a server's --limit-mm-per-prompt must allow it).",
    )
    image_size: int = Field(448, ge=28, description="Longest side of images / frames given to the rater.")
    resources: ResourceConfig = Field(default_factory=ResourceConfig, description="Rater actor pool.")


class MediaConfig(Strict):
    root: str | None = Field(
        None, description="Media folder or fsspec URL (s3://bucket/prefix, gs://...); default <output_dir>/media."
    )
    image_format: Literal["jpg", "png", "webp"] = Field("jpg", description="Image encoding in media/ and shards.")
    jpeg_quality: int = Field(95, ge=1, le=100, description="JPEG / WebP quality.")
    video_fps: float = Field(16.0, gt=0, description="Frame rate of exported H.264 videos.")
    min_image_side: int = Field(0, ge=0, description="Reject image candidates whose short side is below this (px).")
    min_video_side: int = Field(0, ge=0, description="Reject video candidates whose short side is below this (720 = 720p).")

    def min_side(self, modality: str) -> int:
        return self.min_video_side if modality == "video" else self.min_image_side


class ShardConfig(Strict):
    samples_per_shard: int = Field(1000, ge=1, description="Pairs per tar shard.")
    split: str = Field("train", pattern=r"^[a-z0-9_]+$", description="Split name in shard file names.")


class FailureConfig(Strict):
    max_share: float = Field(
        0.1, ge=0, le=1,
        description="A model stage stops when more than this share of its items failed (each failure is a row with its "
        "reason: failed, corrupt_media, vlm_no_label); below it, failed items are recorded and the stage goes on.",
    )
    min_items: int = Field(50, ge=1, description="Items a stage must have seen before the share is checked.")


class RayConfig(Strict):
    address: str | None = Field(None, description="Cluster address; None starts a local instance (or RAY_ADDRESS).")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local instance; default: all.")
    columnar: Literal["auto", "local", "ray"] = Field(
        "auto",
        description="Where the columnar stages (score statistics, pair, select, write) run their units (one per "
        "category, or per shard): in the driver process (local) or as Ray tasks (ray), with identical tables; "
        "auto picks ray from columnar_min_rows input rows on.",
    )
    columnar_min_rows: int = Field(100_000, ge=1, description="Input rows of a columnar stage from which `columnar: auto` uses Ray.")


class BuildConfig(Strict):
    name: str = Field("vipo", description="Dataset name, used in the card.")
    output_dir: str = Field("./vipo-build", description="Build folder: manifests, media, shards, card.")
    seed: int = Field(0, description="Seed of prompt sampling and shuffling.")
    categories: dict[str, CategoryConfig] = Field(min_length=1, description="Categories to build, with quotas.")
    generators: list[GeneratorConfig] = Field(min_length=1, description="Candidate generators.")
    scoring: ScoringConfig = Field(description="Reward models and their actors.")
    pairing: PairingConfig = Field(default_factory=PairingConfig, description="Pair formation and consistency rule.")
    selection: SelectionConfig = Field(default_factory=SelectionConfig, description="Balancing of the selected pairs.")
    judge: JudgeConfig | None = Field(None, description="VLM rater; None skips the judge stage.")
    prompt_files: list[str] = Field(
        default_factory=list, description="User prompt files (txt, jsonl, csv, parquet) added to the library prompts."
    )
    media: MediaConfig = Field(default_factory=MediaConfig, description="Media encoding.")
    shards: ShardConfig = Field(default_factory=ShardConfig, description="Shard layout.")
    ray: RayConfig = Field(default_factory=RayConfig, description="Where the stages run.")
    failures: FailureConfig = Field(default_factory=FailureConfig, description="When item failures stop a stage.")
    cache_dir: str | None = Field(None, description="Where tiny models are materialised; default ~/.cache/vipo.")

    @model_validator(mode="after")
    def _consistent(self) -> BuildConfig:
        for cat in self.categories:
            if cat not in CATEGORIES:
                raise ValueError(f"categories: unknown category {cat!r}; expected one of {list(CATEGORIES)}")
        names = [g.name for g in self.generators]
        if len(set(names)) != len(names):
            raise ValueError(f"generators: duplicate generator names {names}")
        scorers = [r.name for r in self.scoring.reward_models]
        if len(set(scorers)) != len(scorers):
            raise ValueError(f"scoring.reward_models: duplicate names {scorers}")
        p = self.pairing
        if p.max_margin is not None and p.max_margin <= p.min_margin:
            raise ValueError(f"pairing.max_margin: {p.max_margin} must exceed pairing.min_margin {p.min_margin}")
        if self.pairing.quorum is not None and self.pairing.quorum > len(scorers):
            raise ValueError(f"pairing.quorum: {self.pairing.quorum} exceeds the {len(scorers)} reward models")
        return self

    @property
    def scorer_names(self) -> list[str]:
        return [r.name for r in self.scoring.reward_models]

    @property
    def quorum(self) -> int:
        return self.pairing.quorum or len(self.scoring.reward_models)


def format_error(source: str, err: ValidationError) -> str:
    """pydantic's first error as `<source>: <key>: <message>` (and how many more there are)."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    if not loc:  # cross-field checks name their key as "key: message"
        head, sep, rest = msg.partition(": ")
        loc, msg = (head, rest) if sep and " " not in head else ("<root>", msg)
    extra = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{source}: {loc}: {msg}{extra}"


M = TypeVar("M", bound=BaseModel)


def validate_config(model: type[M], data: Any, source: str) -> M:
    """Validate plain data against a config model; ConfigError with one line on any problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: <root>: expected a mapping, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_error(source, err)) from None


def parse_config(data: Any, source: str = "<config>") -> BuildConfig:
    return validate_config(BuildConfig, data, source)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> BuildConfig:
    """Load and validate a YAML build config; raises ConfigError with one line on any problem."""
    return parse_config(read_yaml(path, overrides), str(path))
