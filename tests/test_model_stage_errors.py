"""One unreadable item costs only itself: each model stage finishes a unit with one bad item, that item a
row of its output with the reason, the others processed (docs/architecture.md, "Errors"). The score stage
with tiny reward models (truncated media, a model that raises on one image), the judge stage with the tiny
rater (missing media, a rater with neither label for one pair), and the error policy that stops a stage
when too many items fail, keeping the units finished before it."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pytest

from pipeline.catalogue import Table
from pipeline.errors import CORRUPT_MEDIA, FAILED, VLM_NO_LABEL, ErrorPolicy, ItemFailure, StageFailed
from pipeline.executor import Executor
from pipeline.media import encode_image
from pipeline.stage import TaskStage, run_unit
from pipeline.store import write_bytes
from schemas.config import JudgeConfig, ResourceConfig
from schemas.tables import CANDIDATES, JUDGEMENTS, PROMPTS, pairs_schema, raw_scores_schema
from schemas.units import Unit, UnitStats, make_unit

CAT = "aesthetics"
MODELS = ("clipscore", "aesthetic")
GOOD, BAD = (64, 64), (72, 64)  # the image a stand-in model raises on is told by its size


def _table(schema: pa.Schema, rows: list[dict]) -> pa.Table:
    """`rows` with every field of `schema` they do not give null."""
    return pa.table({f.name: pa.array([r.get(f.name) for r in rows], f.type) for f in schema}, schema=schema)


def _unit(folder: Path, schema: pa.Schema, rows: list[dict], extra: dict | None = None) -> Table:
    """A table holding `rows` as one finished unit of category CAT (as the upstream stage writes it)."""
    table = Table(str(folder), schema, cluster_by="category")
    table.write_unit(f"{folder.name}-0", _table(schema, rows), UnitStats(n_in=len(rows), n_out=len(rows), extra=extra or {}))
    return table


def _picture(seed: int, size: tuple[int, int] = GOOD) -> bytes:
    w, h = size
    return encode_image(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _prompts(root: Path, ids: list[str]) -> Table:
    return _unit(root / "prompts", PROMPTS, [{"prompt_id": p, "category": CAT, "modality": "image", "prompt": f"prompt {p}"}
                                             for p in ids])


def _candidates(root: Path, media: dict[str, str | None], prompt_of: dict[str, str]) -> Table:
    rows = [{"candidate_id": cid, "prompt_id": prompt_of[cid], "category": CAT, "modality": "image", "generator": "g",
             "seed": i, "params": "{}", "media_path": path, "status": "ok"} for i, (cid, path) in enumerate(media.items())]
    return _unit(root / "candidates", CANDIDATES, rows)


# ---------------------------------------------------------------------------------------- the score stage
@pytest.fixture(scope="module")
def score_models(vipo_cache) -> list[tuple[str, str, str, dict]]:
    from pipeline.models import reward_model_path

    return [(name, reward_model_path(name, "tiny", vipo_cache), "float32", {}) for name in MODELS]


class _Scorer:
    """A loaded reward model that raises on any batch holding an image of size `bad` (a model error on
    that item alone); records the batch sizes it was called with."""

    def __init__(self, inner, bad: tuple[int, int] | None = None):
        self.inner, self.bad, self.calls = inner, bad, []

    def score(self, images, prompts):
        self.calls.append(len(images))
        if self.bad is not None and any(im.size == self.bad for im in images):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return self.inner.score(images, prompts)


def _score_stage(tmp_path: Path, score_models, files: dict[str, bytes]):
    """A score stage over one unit of candidates c0, c1, c2 (media under tmp_path/media), its models loaded."""
    from pipeline.score import ScoreStage

    ids = [f"{i:016x}" for i in range(3)]
    media = {cid: f"image/{cid}.jpg" for cid in ids}
    for cid, data in zip(ids, files.values()):
        write_bytes(tmp_path / "media" / media[cid], data)
    prompt_of = {cid: f"p{i}" for i, cid in enumerate(ids)}
    stage = ScoreStage(resources=ResourceConfig(batch_size=4), models=list(score_models), media_root=str(tmp_path / "media"),
                       video_metrics=False, candidates=_candidates(tmp_path, media, prompt_of),
                       prompts=_prompts(tmp_path, sorted(prompt_of.values())),
                       raw=Table(str(tmp_path / "raw"), raw_scores_schema(list(MODELS)), cluster_by="category"))
    [unit] = stage.plan()
    stage.setup()
    return stage, unit, ids


def test_score_stage_records_corrupt_media_and_scores_the_rest(tmp_path, score_models):
    good = _picture(0)
    files = {"a": good, "b": good[:40] + b"\x00garbage, not the rest of a jpeg", "c": _picture(2)}
    stage, unit, ids = _score_stage(tmp_path, score_models, files)
    spies = {name: _Scorer(model) for name, model in stage.loaded.items()}
    stage.loaded = dict(spies)
    rec = run_unit(stage, unit)
    assert rec["rows"] == 3  # the unit finished, every candidate a row
    rows = {r["candidate_id"]: r for r in stage.raw.read().to_pylist()}
    bad = rows[ids[1]]
    assert bad["reason"] == CORRUPT_MEDIA and all(bad[m] is None for m in MODELS)
    for cid in (ids[0], ids[2]):
        assert rows[cid]["reason"] is None and all(isinstance(rows[cid][m], float) and math.isfinite(rows[cid][m]) for m in MODELS)
    assert all(s.calls == [2] for s in spies.values())  # the undecodable item never reached a model
    assert stage.stats.failed == {CORRUPT_MEDIA: 1} and (stage.stats.n_in, stage.stats.n_out) == (3, 2)
    assert stage.stats.examples[0].startswith(f"{ids[1]}: {CORRUPT_MEDIA}: ")
    assert stage.raw.records()[unit.id].unit_stats.failed == {CORRUPT_MEDIA: 1}  # kept by the unit's done marker


def test_score_stage_retries_one_by_one_when_a_model_fails_on_one_image(tmp_path, score_models):
    from pipeline.media import decode_image

    files = {"a": _picture(0), "b": _picture(1, BAD), "c": _picture(2)}
    stage, unit, ids = _score_stage(tmp_path, score_models, files)
    clean = dict(stage.loaded)
    flaky = _Scorer(clean["clipscore"], bad=BAD)
    stage.loaded = {"clipscore": flaky, "aesthetic": clean["aesthetic"]}
    run_unit(stage, unit)
    assert flaky.calls == [3, 1, 1, 1]  # the batch, then each item alone
    rows = {r["candidate_id"]: r for r in stage.raw.read().to_pylist()}
    bad = rows[ids[1]]
    assert bad["reason"] == FAILED and all(bad[m] is None for m in MODELS)  # no partial scores for a failed item
    prompts = {cid: f"prompt p{i}" for i, cid in enumerate(ids)}
    for cid, key in ((ids[0], "a"), (ids[2], "c")):
        assert rows[cid]["reason"] is None
        for name in MODELS:  # scored alone now, as in the batch: the same numbers
            want = float(clean[name].score([decode_image(files[key])], [prompts[cid]])[0])
            assert rows[cid][name] == pytest.approx(want, rel=1e-4, abs=1e-4)
    assert stage.stats.failed == {FAILED: 1} and (stage.stats.n_in, stage.stats.n_out) == (3, 2)
    assert "RuntimeError: CUDA error" in stage.stats.examples[0] and ids[1] in stage.stats.examples[0]


# ---------------------------------------------------------------------------------------- the judge stage
@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> str:
    from reward_models.vlm_rater import save_tiny_rater

    return save_tiny_rater(tmp_path_factory.mktemp("tiny-rater") / "qwen2vl", seed=0)


class _NoLabelFor:
    """A backend stand-in: the real tiny rater's answers, except (-inf, -inf) for both orders of the
    pair whose prompt is `prompt` (neither label among the first token's log-probabilities)."""

    def __init__(self, inner, prompt: str):
        self.inner, self.prompt, self.calls = inner, prompt, []

    def label_logprobs(self, queries):
        self.calls.append(len(queries))
        real = self.inner.label_logprobs(queries)
        text = lambda q: "".join(v for k, v in q if k == "text")
        return [(-math.inf, -math.inf) if self.prompt in text(q) else r for q, r in zip(queries, real)]


def _judge_stage(tmp_path: Path, tiny_folder: str, missing: set[str] = frozenset()):
    """A judge stage over the kept pairs of one pairs unit (three kept, then one dropped), its rater
    loaded. Candidates in `missing` have a media path whose file is not there."""
    from pipeline.judge import JudgeStage

    cids = [f"{i:016x}" for i in range(8)]
    media = {cid: f"image/{cid}.jpg" for cid in cids}
    for i, cid in enumerate(cids):
        if cid not in missing:
            write_bytes(tmp_path / "media" / media[cid], _picture(i))
    prompt_of = {cid: f"p{i // 2}" for i, cid in enumerate(cids)}  # pair k: candidates 2k, 2k + 1 of prompt pk
    scorers = list(MODELS)
    pairs = [{"pair_id": f"{k:015x}f", "prompt_id": f"p{k}", "category": CAT, "modality": "image", "winner_id": cids[2 * k],
              "loser_id": cids[2 * k + 1], "agree": 2, "n_scorers": 2, "kept": k < 3, "drop_reason": None if k < 3 else "tie"}
             for k in range(4)]
    cfg = JudgeConfig(model="tiny", image_size=56, resources=ResourceConfig(batch_size=4))
    stage = JudgeStage(resources=cfg.resources, cfg=cfg, model_path=tiny_folder, media_root=str(tmp_path / "media"),
                       pairs=_unit(tmp_path / "pairs", pairs_schema(scorers), pairs, extra={"kept": 3}),
                       candidates=_candidates(tmp_path, media, prompt_of), prompts=_prompts(tmp_path, [f"p{k}" for k in range(4)]),
                       judgements=Table(str(tmp_path / "judgements"), JUDGEMENTS, cluster_by="category"))
    [unit] = stage.plan()
    assert unit.rows == 3  # the kept prefix only
    stage.setup()
    return stage, unit, [p["pair_id"] for p in pairs[:3]], cids


def test_judge_stage_records_missing_media_and_judges_the_rest(tmp_path, tiny_folder):
    cids = [f"{i:016x}" for i in range(8)]
    stage, unit, ids, _ = _judge_stage(tmp_path, tiny_folder, missing={cids[3]})  # the loser of pair 1
    rec = run_unit(stage, unit)
    assert rec["rows"] == 3
    out = stage.judgements.read()
    assert out.schema.equals(JUDGEMENTS)
    rows = {r["pair_id"]: r for r in out.to_pylist()}
    assert sorted(rows) == ids and all(r["category"] == CAT and r["rater"] == "transformers:tiny" for r in rows.values())
    bad = rows[ids[1]]
    assert bad["reason"] == CORRUPT_MEDIA and bad["p_winner"] is None and bad["position_consistency"] is None
    for pid in (ids[0], ids[2]):
        r = rows[pid]
        assert r["reason"] is None and 0 <= r["p_winner"] <= 1
        assert r["p_winner"] == pytest.approx((r["p_winner_first"] + r["p_winner_second"]) / 2, abs=1e-6)
    assert stage.stats.failed == {CORRUPT_MEDIA: 1} and (stage.stats.n_in, stage.stats.n_out) == (3, 2)
    assert stage.stats.examples[0].startswith(f"{ids[1]}: {CORRUPT_MEDIA}: FileNotFoundError")
    assert stage.judgements.records()[unit.id].unit_stats.failed == {CORRUPT_MEDIA: 1}


def test_judge_stage_records_a_pair_with_no_label_and_judges_the_rest(tmp_path, tiny_folder):
    stage, unit, ids, _ = _judge_stage(tmp_path, tiny_folder)
    real = stage.rater.backend
    run_unit(stage, unit)
    reference = {r["pair_id"]: r for r in stage.judgements.read().to_pylist()}  # the rater, every pair answered
    assert all(r["reason"] is None for r in reference.values())
    stage.rater.backend = spy = _NoLabelFor(real, "prompt p2")
    stage.judgements.clear()
    run_unit(stage, unit)
    assert spy.calls == [6]  # one backend call: a pair with no label is an answer, not an error to retry
    rows = {r["pair_id"]: r for r in stage.judgements.read().to_pylist()}
    bad = rows[ids[2]]
    assert bad["reason"] == VLM_NO_LABEL and bad["p_winner"] is None and bad["p_winner_first"] is None
    for pid in ids[:2]:
        assert rows[pid]["reason"] is None
        for k in ("p_winner", "p_winner_first", "p_winner_second", "position_consistency"):
            assert rows[pid][k] == pytest.approx(reference[pid][k], abs=1e-5)
    assert stage.stats.failed == {VLM_NO_LABEL: 1} and (stage.stats.n_in, stage.stats.n_out) == (3, 2)
    assert f"pair {ids[2]}" in stage.stats.examples[0]
    # the select stage's rule drops that pair with the rater's reason
    from pipeline.select import judge_keeps

    keeps = {r["pair_id"]: r for r in judge_keeps(stage.judgements.read(), JudgeConfig(min_probability=0.0)).to_pylist()}
    assert keeps[ids[2]] == {"pair_id": ids[2], "kept": False, "drop_reason": VLM_NO_LABEL}


# ---------------------------------------------------------------------------------------- the error policy
def _stats(n_in: int, failed: dict[str, int]) -> UnitStats:
    return UnitStats(n_in=n_in, n_out=n_in - sum(failed.values()), failed=dict(failed),
                     examples=[f"{k}-item: {k}: boom" for k in sorted(failed)])


def test_error_policy_stops_past_the_share_only():
    policy = ErrorPolicy(max_share=0.2, min_items=5)
    with pytest.raises(StageFailed) as err:
        policy.check("score", _stats(10, {FAILED: 2, CORRUPT_MEDIA: 1}))
    msg = str(err.value)
    assert "stage 'score'" in msg and "3 of 10 items failed" in msg
    assert f"({CORRUPT_MEDIA} 1, {FAILED} 2)" in msg and "max_share 0.2" in msg
    assert f"e.g. {CORRUPT_MEDIA}-item: {CORRUPT_MEDIA}: boom" in msg  # an example names the item
    policy.check("score", _stats(10, {FAILED: 2}))  # exactly the share: goes on
    policy.check("score", _stats(10, {}))
    policy.check("score", _stats(4, {FAILED: 4}))  # fewer items seen than min_items: too early to judge
    with pytest.raises(StageFailed, match="5 of 5 items failed"):
        policy.check("score", _stats(5, {FAILED: 5}))


@dataclass
class HalfFails(TaskStage):
    """Four units of two items each; the second item of every unit fails."""

    out: Table | None = None
    processed: list = field(default_factory=list)

    name: ClassVar[str] = "halves"

    def outputs(self) -> tuple[Table, ...]:
        return (self.out,)

    def plan(self) -> list[Unit]:
        return [make_unit("halves", (i,), key="k", rows=2, index=i) for i in range(4)]

    def process(self, unit: Unit) -> pa.Table:
        self.processed.append(unit.param("index"))
        rows = []
        for j in range(2):
            item = f"u{unit.param('index')}-{j}"
            if j == 1:
                self.fail(ItemFailure.of(item, ValueError("cannot read it"), CORRUPT_MEDIA))
            rows.append({"item": item, "category": "k", "reason": CORRUPT_MEDIA if j == 1 else None})
        self.count(n_in=2, n_out=1)
        return pa.Table.from_pylist(rows, schema=self.out.schema)


def test_the_executor_stops_a_failing_stage_and_keeps_its_finished_units(tmp_path):
    schema = pa.schema([("item", pa.string()), ("category", pa.string()), ("reason", pa.string())])
    out = Table(str(tmp_path / "halves"), schema, cluster_by="category")
    stage = HalfFails(out=out, engine="local")
    with pytest.raises(StageFailed, match=r"stage 'halves': 3 of 6 items failed \(corrupt_media 3\)"):
        Executor(policy=ErrorPolicy(max_share=0.2, min_items=5), use_ray=False).run(stage)
    # units 0 and 1 (2 and 4 items seen: too few to judge) and unit 2 (6 seen, half failed) finished first
    assert stage.processed == [0, 1, 2]
    units = stage.plan()
    assert set(out.records()) == {u.id for u in units[:3]}
    assert out.read().num_rows == 6 and out.read()["reason"].to_pylist().count(CORRUPT_MEDIA) == 3
    # a rerun with a lenient policy skips the finished units and runs the rest
    again = HalfFails(out=out, engine="local")
    summary = Executor(policy=ErrorPolicy(max_share=0.6, min_items=5), use_ray=False).run(again)
    assert again.processed == [3]
    assert (summary.units, summary.units_run) == (4, 1)
    assert summary.dropped == {CORRUPT_MEDIA: 4} and (summary.n_in, summary.n_out) == (8, 4)
    assert (summary.now, summary.before) == (2, 6)
    assert set(out.records()) == {u.id for u in units} and out.read().num_rows == 8
