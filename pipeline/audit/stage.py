"""The audit's model stage: an actor reads its unit's rows itself, checks each row, decodes both images
(bounded by `max_pixels` before any pixel is decoded) and scores them with every reward model.

A bad row never fails the unit: it becomes a row with its skip reason (schemas.audit.SKIP_REASONS)
and the error text, so the audit can count and explain what it left out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa

from pipeline.audit.checks import check_row
from pipeline.audit.read import iter_unit
from pipeline.catalogue import Table
from pipeline.errors import FAILED, ItemFailure
from pipeline.formats.shards import READ_ERRORS
from pipeline.scoring import score_items
from pipeline.stage import ActorStage
from schemas.audit import SCORED, audit_scores_schema
from schemas.units import Unit, make_unit

#: Prefix of the message of a unit whose file cannot be read: the driver finds it inside Ray's error
#: and reports that one line (the file is bad, not a row of it).
READ_ERROR = "audit input error: "
#: The same for a reward model an actor cannot load (a hub id that is not there, a broken checkpoint).
MODEL_ERROR = "audit model error: "

__all__ = ["AuditScoreStage", "MODEL_ERROR", "READ_ERROR", "UnitReadError", "check_row", "decode_pair", "decode_video_pair"]


class UnitReadError(RuntimeError):
    """The file behind a unit cannot be read (truncated, changed since planning, damaged pages)."""


def _read_batches(unit: dict[str, Any], batch_size: int):
    where = f"{unit.get('tar') or unit.get('path') or 'pair file'}: rows {unit.get('start')}..{unit.get('stop')}"
    seen = 0
    try:
        for batch in iter_unit(unit, batch_size):
            seen += len(batch)
            yield batch
    except (pa.ArrowException, OSError, *READ_ERRORS, IndexError, ValueError) as err:
        raise UnitReadError(f"{READ_ERROR}{where}: cannot read ({type(err).__name__}: {err})") from None
    if seen != unit["stop"] - unit["start"]:
        raise UnitReadError(f"{READ_ERROR}{where}: read {seen} rows; the file changed since the audit began")


def decode_pair(row: dict[str, Any], max_pixels: int) -> tuple[str, str | None, list]:
    """Both images of a row, or the reason they cannot be used."""
    from pipeline.media import decode_image

    images = []
    for i in (0, 1):
        try:
            images.append(decode_image(row[f"img_{i}"], max_pixels=max_pixels))
        except ValueError as err:
            if "refused before decoding" in str(err):
                return "image_too_large", f"image {i}: {err}", []
            return "corrupt_image", f"image {i}: {err}", []
        except Exception as err:
            return "corrupt_image", f"image {i}: {type(err).__name__}: {err}", []
    return SCORED, None, images


def decode_video_pair(row: dict[str, Any], max_pixels: int, max_frames: int, frames: int) -> tuple[str, str | None, list]:
    """Both videos of a row as `frames` sampled PIL frames each; the container header is probed
    first (no decoding), and a frame over `max_pixels` or a clip over `max_frames` is refused."""
    from PIL import Image

    from pipeline.media import probe_video, read_video_frames

    clips = []
    for i in (0, 1):
        data = row[f"img_{i}"]
        try:
            info = probe_video(data)
        except Exception as err:
            return "corrupt_image", f"video {i}: {type(err).__name__}: {err}", []
        w, h, n = info["width"], info["height"], info["num_frames"]
        if not n:  # unknown length: decoding could not be bounded
            return "corrupt_image", f"video {i}: the container does not state its frame count", []
        if w * h > max_pixels or n > max_frames:
            return "image_too_large", (f"video {i}: refused before decoding: header says {w}x{h}, {n} frames "
                                       f"(max_pixels {max_pixels}, max_video_frames {max_frames})"), []
        try:
            clips.append([Image.fromarray(f) for f in read_video_frames(data, frames)])
        except Exception as err:
            return "corrupt_image", f"video {i}: {type(err).__name__}: {err}", []
    return SCORED, None, clips


def _label(row: dict[str, Any]) -> float | None:
    if isinstance(row.get("label_0"), bool):
        return None
    try:
        return float(row["label_0"])
    except (TypeError, ValueError, KeyError, OverflowError):
        return None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass
class AuditScoreStage(ActorStage):
    """All reward models on one actor; a unit is a row range of one input file (`pipeline.audit.read`
    plans them from parquet footers, or from a pair file's text)."""

    models: list[tuple[str, str, str, dict]] = field(default_factory=list)  # (name, path or hub id, dtype, options)
    max_pixels: int = 64_000_000
    max_video_frames: int = 2000
    video_frames: int = 4
    read_units: list[dict[str, Any]] = field(default_factory=list)  # plan_units' descriptors
    scores: Table | None = None

    name: ClassVar[str] = "score"
    verb: ClassVar[str] = "scored"
    prune: ClassVar[bool] = False  # a --limit run must not drop the rows an earlier, larger run scored

    def outputs(self) -> tuple[Table, ...]:
        return (self.scores,)

    def plan(self) -> list[Unit]:
        return [make_unit("audit", (u["id"],), key=u["kind"], rows=u["stop"] - u["start"], unit=u) for u in self.read_units]

    def setup(self) -> None:
        from reward_models.registry import load_reward_models

        device = "cuda" if self.resources.num_gpus > 0 else "cpu"
        self.loaded = {}
        for i, model in enumerate(self.models):
            try:
                self.loaded.update(load_reward_models([model], device))
            except Exception as err:  # one line for the driver to report, not the loader's traceback
                first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                raise RuntimeError(f"{MODEL_ERROR}{model[1]}: reward_models.{i} ({model[0]}) does not load "
                                   f"({type(err).__name__}: {first})") from None

    @property
    def scorers(self) -> list[str]:
        return [m[0] for m in self.models]

    def process(self, unit: Unit | list[dict[str, Any]]) -> pa.Table:
        schema = audit_scores_schema(self.scorers)
        units = [unit.param("unit")] if isinstance(unit, Unit) else unit
        out = pa.concat_tables([self._unit(u, schema) for u in units])
        status = out["status"].to_pylist()
        self.count(n_in=out.num_rows, n_out=status.count(SCORED))
        for reason in sorted(set(status) - {SCORED}):
            self.drop(reason, status.count(reason))
        return out

    def _unit(self, unit: dict[str, Any], schema: pa.Schema) -> pa.Table:
        cols: dict[str, list] = {name: [] for name in schema.names}
        for batch in _read_batches(unit, self.resources.batch_size):
            ok: dict[bool, list[tuple[int, list, str]]] = {False: [], True: []}  # is video -> (row at, media, prompt)
            for row in batch:
                status, detail = check_row(row)
                media: list = []
                if status == SCORED and row.get("video"):
                    status, detail, media = decode_video_pair(row, self.max_pixels, self.max_video_frames, self.video_frames)
                elif status == SCORED:
                    status, detail, media = decode_pair(row, self.max_pixels)
                cols["row_id"].append(f"{unit['key']}:{row['row']:010d}")
                cols["unit_id"].append(unit["id"])
                cols["source"].append(unit["source"])
                cols["row"].append(row["row"])
                cols["status"].append(status)
                cols["detail"].append(detail)
                cols["label_0"].append(_label(row))
                cols["model_0"].append(_text(row.get("model_0")))
                cols["model_1"].append(_text(row.get("model_1")))
                if status == SCORED:
                    ok[bool(row.get("video"))].append((len(cols["row_id"]) - 1, media, str(row["caption"])))
            for name in self.scorers:
                for side in (0, 1):
                    cols[f"{name}_{side}"].extend([None] * len(batch))
            for video, pairs in ok.items():
                for name, results in self._score(pairs, video).items():
                    for (at, _, _), r in zip(pairs, results):
                        if isinstance(r, ItemFailure):  # a model failed on this pair alone: one row, its reason
                            cols["status"][at], cols["detail"][at] = FAILED, f"{name}: {r.message}"
                        else:
                            cols[f"{name}_0"][at], cols[f"{name}_1"][at] = float(r[0]), float(r[1])
            for at, status in enumerate(cols["status"]):
                if status == FAILED:
                    for name in self.scorers:
                        cols[f"{name}_0"][at] = cols[f"{name}_1"][at] = None
        return pa.table({f.name: pa.array(cols[f.name], type=f.type) for f in schema}, schema=schema)

    def _score(self, pairs: list[tuple[int, list, str]], video: bool) -> dict[str, list]:
        """Per model, per pair: (score of side 0, score of side 1), or the ItemFailure of a side the
        model fails on alone. Both sides go through one call (`pipeline.scoring.score_items`, as the
        build's score stage; videos through `score_video`: the image reward averaged over frames)."""
        if not pairs:
            return {}
        n = len(pairs)
        media = [p[1][0] for p in pairs] + [p[1][1] for p in pairs]
        ids = [f"row {p[0]} side {side}" for side in (0, 1) for p in pairs]
        out = {}
        for name, s in score_items(self.loaded, media, [p[2] for p in pairs] * 2, video=video, ids=ids).items():
            out[name] = [a if isinstance(a, ItemFailure) else b if isinstance(b, ItemFailure) else (a, b)
                         for a, b in zip(s[:n], s[n:])]
        return out
