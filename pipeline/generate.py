"""The generate stage: prompts x generators x sampling settings x seeds -> media files + candidates rows."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from pipeline.stage import ActorStage
from schemas.config import BuildConfig, MediaConfig
from schemas.ids import candidate_id, canonical_json, derive_seed
from schemas.shard import media_extension
from schemas.tables import CANDIDATES

BELOW_MIN_RESOLUTION = "below_min_resolution"


def media_key(modality: str, cid: str, image_format: str) -> str:
    """Where a candidate's media lives, relative to the media root."""
    return f"{modality}/{cid[:2]}/{cid}.{media_extension(modality, image_format)}"


def plan_candidates(prompts: pa.Table, cfg: BuildConfig, specs: dict) -> list[dict[str, Any]]:
    """Every candidate the config asks for, with its deterministic seed and id (no pixels yet)."""
    tasks = []
    for row in prompts.to_pylist():
        for gcfg in cfg.generators:
            spec = specs[gcfg.name]
            if spec.modality != row["modality"]:
                continue
            if gcfg.categories is not None and row["category"] not in gcfg.categories:
                continue
            for sampling in gcfg.sampling:
                params = {**spec.call_kwargs, **sampling}
                pjson = canonical_json(params)
                for k in range(gcfg.seeds_per_prompt):
                    seed = derive_seed(row["prompt_id"], gcfg.name, pjson, str(k))
                    tasks.append(
                        {
                            "id": candidate_id(row["prompt_id"], gcfg.name, seed, params),
                            "prompt_id": row["prompt_id"],
                            "category": row["category"],
                            "modality": row["modality"],
                            "prompt": row["prompt"],
                            "generator": gcfg.name,
                            "seed": seed,
                            "params": pjson,
                        }
                    )
    return tasks


@dataclass
class GenerateStage(ActorStage):
    """One generator's actor pool: loads its diffusers pipeline once, renders units of same-params tasks."""

    spec: Any = None  # pipeline.generators.GeneratorSpec
    model_path: str = ""
    media_root: str = ""
    media: MediaConfig = field(default_factory=MediaConfig)
    name = "generate"

    def setup(self) -> None:
        from pipeline.generators import load_pipeline

        device = "cuda" if self.resources.num_gpus > 0 else "cpu"
        self.pipe = load_pipeline(self.spec, self.model_path, device=device)

    def _render(self, tasks: list[dict]) -> list:
        from pipeline.generators import run_pipeline

        return run_pipeline(
            self.pipe, self.spec, [t["prompt"] for t in tasks], [t["seed"] for t in tasks], json.loads(tasks[0]["params"])
        )

    def process(self, tasks: list[dict[str, Any]]) -> pa.Table:
        try:
            outputs: list = self._render(tasks)
        except Exception:
            outputs = []
            for t in tasks:
                try:
                    outputs.append(self._render([t])[0])
                except Exception as err:
                    outputs.append(err)
        return pa.Table.from_pylist([self._row(t, out) for t, out in zip(tasks, outputs)], schema=CANDIDATES)

    def _row(self, task: dict, out: Any) -> dict:
        from pipeline.media import MediaStore, encode_image, encode_video, sha256_hex
        from pipeline.phash import phash_hex

        row = {k: task[k] for k in ("prompt_id", "category", "modality", "generator", "seed", "params")}
        row["candidate_id"] = task["id"]
        if isinstance(out, BaseException):
            return {**row, "status": "failed", "reason": f"{type(out).__name__}: {out}"[:500]}
        video = task["modality"] == "video"
        frames, (height, width) = (out.shape[0] if video else 1), out.shape[-3:-1]
        floor = self.media.min_side(task["modality"])
        if min(height, width) < floor:  # never upscaled: a small candidate is recorded, not kept
            reason = f"{BELOW_MIN_RESOLUTION}: {width}x{height}, short side < {floor}"
            return {**row, "width": width, "height": height, "num_frames": frames, "status": "failed", "reason": reason}
        if video:
            data, fps = encode_video(out, self.media.video_fps), self.media.video_fps
        else:
            data, fps = encode_image(out, self.media.image_format, self.media.jpeg_quality), None
        rel = media_key(task["modality"], task["id"], self.media.image_format)
        MediaStore(self.media_root).write(rel, data)
        return {
            **row,
            "media_path": rel,
            "sha256": sha256_hex(data),
            "phash": phash_hex(out),  # from the pixels in hand: pairing never decodes media to find near-duplicates
            "width": width,
            "height": height,
            "num_frames": frames,
            "fps": fps,
            "status": "ok",
            "reason": None,
        }
