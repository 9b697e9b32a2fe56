"""The generate stage: prompts x generators x sampling settings x seeds -> media files + candidates rows.

A unit is one generator's sampling setting over a row range of one category's prompts; the actor reads
those prompts, expands them into candidates (seeds and ids from identity, so a rerun makes the same
pixels), renders them in batches of `batch_size` in id order and writes each media file once.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa

from pipeline.catalogue import Table, read_slices
from pipeline.errors import ItemFailure, batch_then_each
from pipeline.stage import ActorStage
from schemas.config import GeneratorConfig, MediaConfig
from schemas.ids import candidate_id, canonical_json, derive_seed
from schemas.shard import media_extension
from schemas.tables import CANDIDATES
from schemas.units import Slice, Unit, make_unit

BELOW_MIN_RESOLUTION = "below_min_resolution"


def media_key(modality: str, cid: str, image_format: str) -> str:
    """Where a candidate's media lives, relative to the media root."""
    return f"{modality}/{cid[:2]}/{cid}.{media_extension(modality, image_format)}"


def expand(prompts: pa.Table, generator: str, params_json: str, seeds_per_prompt: int,
           seed_key: str = "") -> list[dict[str, Any]]:
    """The candidates of `prompts` under one generator and sampling setting, sorted by id (no pixels).

    Seeds come from (prompt, generator, params, k); with `seed_key` from (prompt, seed_key, k) alone, so
    models compared on the same prompts get the same seeds (`cli.py eval`)."""
    params = json.loads(params_json)
    tasks = []
    for row in prompts.to_pylist():
        for k in range(seeds_per_prompt):
            if seed_key:
                seed = derive_seed(row["prompt_id"], seed_key, "", str(k))
            else:
                seed = derive_seed(row["prompt_id"], generator, params_json, str(k))
            tasks.append({
                "id": candidate_id(row["prompt_id"], generator, seed, params),
                "prompt_id": row["prompt_id"], "category": row["category"], "modality": row["modality"],
                "prompt": row["prompt"], "generator": generator, "seed": seed, "params": params_json,
            })
    return sorted(tasks, key=lambda t: t["id"])


@dataclass
class GenerateStage(ActorStage):
    """One generator's actor pool: loads its diffusers pipeline once, renders units of same-params tasks."""

    spec: Any = None  # pipeline.generators.GeneratorSpec
    gcfg: GeneratorConfig | None = None
    model_path: str = ""
    media_root: str = ""
    media: MediaConfig = field(default_factory=MediaConfig)
    prompts: Table | None = None
    candidates: Table | None = None
    categories: tuple[str, ...] = ()  # the build's categories this generator serves
    seed_key: str = ""  # set: seeds shared by every generator with this key (see `expand`)
    weights: str = ""  # fingerprint of weights applied on top of `model_path` (an eval's LoRA); part of unit ids

    name: ClassVar[str] = "generate"
    verb: ClassVar[str] = "generated"

    def outputs(self) -> tuple[Table, ...]:
        return (self.candidates,)

    def plan(self) -> list[Unit]:
        recs = list(self.need(self.prompts, "prompts").values())
        per_unit = self.resources.batch_size * self.resources.batches_per_unit
        g = self.gcfg
        units = []
        for rec in recs:
            extra = rec.unit_stats.extra
            for cat in self.categories:
                if cat not in extra.get("category_rows", {}):
                    continue
                start, stop = extra["category_rows"][cat]
                fingerprint = extra["fingerprints"][cat]
                step = max(1, math.ceil(per_unit / g.seeds_per_prompt))
                for sampling in g.sampling:
                    params = canonical_json({**self.spec.call_kwargs, **sampling})
                    for a in range(start, stop, step):
                        b = min(a + step, stop)
                        identity = (g.name, self.model_path, params, g.seeds_per_prompt, cat, fingerprint, a - start, b - start)
                        units.append(make_unit(
                            "generate", identity + ((self.seed_key, self.weights) if self.seed_key or self.weights else ()),
                            key=params, slices=(Slice(rec.path, rec.offset + a, rec.offset + b),),
                            rows=(b - a) * g.seeds_per_prompt,
                        ))
        return units

    def setup(self) -> None:
        from pipeline.generators import load_pipeline

        device = "cuda" if self.resources.num_gpus > 0 else "cpu"
        self.pipe = load_pipeline(self.spec, self.model_path, device=device)

    def _render(self, tasks: list[dict]) -> list:
        from pipeline.generators import run_pipeline

        return run_pipeline(
            self.pipe, self.spec, [t["prompt"] for t in tasks], [t["seed"] for t in tasks], json.loads(tasks[0]["params"])
        )

    def process(self, unit: Unit | list[dict[str, Any]]) -> pa.Table:
        if isinstance(unit, Unit):
            prompts = read_slices(unit.slices, ["prompt_id", "category", "modality", "prompt"])
            tasks = expand(prompts, self.gcfg.name, unit.key, self.gcfg.seeds_per_prompt, self.seed_key)
        else:  # a list of task dicts (tests drive the stage's logic directly)
            tasks = unit
        rows = []
        bs = self.resources.batch_size
        for i in range(0, len(tasks), bs):
            batch = tasks[i : i + bs]
            for t, out in zip(batch, batch_then_each(batch, self._render, lambda t: t["id"])):
                rows.append(self._row(t, out))
        self.count(n_in=len(tasks), n_out=sum(r["status"] == "ok" for r in rows))
        return pa.Table.from_pylist(rows, schema=CANDIDATES)

    def _row(self, task: dict, out: Any) -> dict:
        from pipeline.media import MediaStore, encode_image, encode_video, sha256_hex
        from pipeline.phash import phash_hex

        row = {k: task[k] for k in ("prompt_id", "category", "modality", "generator", "seed", "params")}
        row["candidate_id"] = task["id"]
        if isinstance(out, ItemFailure):
            self.fail(out)
            return {**row, "status": "failed", "reason": out.message}
        video = task["modality"] == "video"
        frames, (height, width) = (out.shape[0] if video else 1), out.shape[-3:-1]
        floor = self.media.min_side(task["modality"])
        if min(height, width) < floor:  # never upscaled: a small candidate is recorded, not kept
            self.drop(BELOW_MIN_RESOLUTION)
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
