"""Selection rules and balance: too-easy and near-duplicate pairs, the winner-generator cap, prompt
spreading, winner position, the report of what could not be filled, and the pair / select stages run locally
and as Ray tasks."""
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.pair import (
    NEAR_DUPLICATE,
    TOO_EASY,
    attach_phash,
    form_pairs,
    pair_ids,
)
from pipeline.phash import hamming, hex_words, phash_hex, phash_luma
from pipeline.score import add_group_stats
from pipeline.select import (
    GENERATOR_CAP,
    OVER_QUOTA,
    PROMPT_CAP,
    feasible_size,
    select_pairs,
)
from schemas.config import parse_config
from schemas.ids import candidate_id, pair_id, prompt_id
from schemas.tables import raw_scores_schema
from tests.conftest import SMALL

RM = ["pickscore", "hpsv21", "imagereward", "clipscore", "aesthetic"]
GENS = ("gen-a", "gen-b", "gen-c")
IMAGE_CATS = ("aesthetics", "composition", "text_image_alignment")


def _scored_set(n_prompts: int, group: int, seed: int = 0, gens: tuple[str, ...] = GENS):
    """A scored set where gen-a is much better, so it wins most consistent pairs (the skew)."""
    rng = np.random.default_rng(seed)
    rows, owners, hashes = [], [], []
    for c in IMAGE_CATS:
        for p in range(n_prompts):
            pid = prompt_id(c, f"prompt {p}")
            for k in range(group):
                g = gens[k % len(gens)]
                cid = candidate_id(pid, g, k, {})
                quality = rng.normal() + (2.0 if g == "gen-a" else 0.0)
                rows.append((cid, pid, c, "image", *(quality + rng.normal(scale=0.3, size=len(RM))), None))  # reason: scored
                owners.append((cid, g, c))
                hashes.append(f"{int(rng.integers(0, 2**63)):016x}")
    cols = list(zip(*rows))
    raw = pa.table({f.name: cols[i] for i, f in enumerate(raw_scores_schema(RM))}, schema=raw_scores_schema(RM))
    cols = list(zip(*owners))
    cands = pa.table({"candidate_id": cols[0], "generator": cols[1], "category": cols[2], "phash": hashes})
    pids = sorted({r[1] for r in rows})
    prompts = pa.table({"prompt_id": pids, "prompt": ["x"] * len(pids)})
    return add_group_stats(raw, RM), cands, prompts


def _cfg(quota: int, share: float | None, per_prompt: int = 4):
    return parse_config({
        **SMALL,
        "categories": {c: {"quota": quota, "prompts": 1} for c in IMAGE_CATS},
        "scoring": {"reward_models": [{"name": n} for n in RM]},
        "pairing": {"quorum": 5, "max_pairs_per_prompt": per_prompt},
        "selection": {"max_winner_generator_share": share},
    })


def _winner_gens(selected: pa.Table, cands: pa.Table):
    gen = dict(zip(cands["candidate_id"].to_pylist(), cands["generator"].to_pylist()))
    df = selected.to_pandas()
    df["gen"] = df["winner_id"].map(gen)
    return df


def test_skewed_generator_meets_quotas_and_cap():
    scores, cands, prompts = _scored_set(n_prompts=30, group=6)
    pairs = form_pairs(scores, RM, quorum=5)
    free = _winner_gens(select_pairs(pairs, prompts, _cfg(40, None), candidates=cands).selected, cands)
    assert (free.groupby("category").gen.apply(lambda g: (g == "gen-a").mean()) >= 0.6).all()  # the skew is real

    sel = select_pairs(pairs, prompts, _cfg(40, 0.4), candidates=cands)
    df = _winner_gens(sel.selected, cands)
    assert df.category.value_counts().to_dict() == dict.fromkeys(IMAGE_CATS, 40)  # every quota met
    assert sel.shortfall == {}
    share = df.groupby("category").gen.value_counts(normalize=True)
    assert share.max() <= 0.4 + 1e-12
    assert (df.groupby("category").gen.apply(lambda g: (g == "gen-a").sum()) == 16).all()  # floor(0.4 * 40)
    dropped = sel.dropped.to_pandas()
    assert (dropped.reason == GENERATOR_CAP).sum() > 0
    # the report agrees with the tables, rule by rule
    for cat, entry in sel.report.items():
        assert entry["selected"] == 40 and entry["short"] == 0 and entry["short_because"] == {}
        assert entry["winner_generators"]["gen-a"] == 16
        for reason in (GENERATOR_CAP, OVER_QUOTA, PROMPT_CAP):
            assert entry["dropped"].get(reason, 0) == ((dropped.category == cat) & (dropped.reason == reason)).sum()
        formed = pairs.filter(pa.compute.equal(pairs["category"], cat))
        assert entry["pairs_formed"] == formed.num_rows
        assert entry["dropped"]["below_quorum"] == formed.to_pandas().drop_reason.eq("below_quorum").sum()


def test_cap_never_starves_a_category_served_by_fewer_generators():
    scores, cands, prompts = _scored_set(n_prompts=10, group=4, gens=("gen-a",))
    sel = select_pairs(form_pairs(scores, RM, quorum=5), prompts, _cfg(8, 0.4), candidates=cands)
    assert sel.shortfall == {} and sel.selected.num_rows == 3 * 8  # one generator: a cap of 1/1 = no cap


def test_vlm_refusals_keep_their_reason_and_probability_ranks():
    from schemas.tables import JUDGE_KEEPS, JUDGEMENTS

    scores, cands, prompts = _scored_set(n_prompts=10, group=4)
    pairs = form_pairs(scores, RM, quorum=5)
    kept = pairs.filter(pairs["kept"])
    ids = kept["pair_id"].to_pylist()
    p = np.linspace(0.05, 0.95, len(ids))
    judgements = pa.table({"pair_id": ids, "category": kept["category"], "rater": ["vlm"] * len(ids), "p_winner": p,
                           "p_winner_first": p, "p_winner_second": p, "position_consistency": [1.0] * len(ids),
                           "reason": pa.nulls(len(ids), pa.string())}, schema=JUDGEMENTS)
    keeps = pa.table({"pair_id": ids, "kept": (p >= 0.5).tolist(),
                      "drop_reason": [None if x >= 0.5 else "vlm_disagrees" for x in p]}, schema=JUDGE_KEEPS)
    sel = select_pairs(pairs, prompts, _cfg(1000, None, per_prompt=6), judged=(judgements, keeps), candidates=cands)
    df = sel.selected.to_pandas()
    assert len(df) == int((p >= 0.5).sum()) and (df.p_vlm >= 0.5).all()
    dropped = sel.dropped.to_pandas()
    assert set(dropped[dropped.reason == "vlm_disagrees"].pair_id) == {i for i, x in zip(ids, p) if x < 0.5}
    with pytest.raises(ValueError, match="no VLM judgement"):
        select_pairs(pairs, prompts, _cfg(1000, None), judged=(judgements.slice(1), keeps.slice(1)), candidates=cands)


def test_feasible_size_exact():
    # caps floor(0.5 n): n = 4 -> 2 + 1 + 1 = 4 fits; n = 5 -> 2 + 1 + 1 < 5; n = 6 -> 3 + 1 + 1 < 6
    assert feasible_size(np.array([10, 1, 1]), quota=10, share=0.5) == 4
    assert feasible_size(np.array([10, 1, 1]), quota=10, share=None) == 10
    assert feasible_size(np.array([5, 5, 5]), quota=9, share=1 / 3) == 9
    assert feasible_size(np.array([7]), quota=5, share=0.5) == 0  # one generator can never hold half


def test_cap_shortfall_is_reported_with_its_reason():
    scores, cands, prompts = _scored_set(n_prompts=30, group=6)
    pairs = form_pairs(scores, RM, quorum=5)
    kept = pairs.filter(pairs["kept"])
    sel = select_pairs(kept, prompts, _cfg(200, 0.5, per_prompt=15), candidates=cands)  # no prompt cap at work
    df = _winner_gens(sel.selected, cands)
    for cat, (quota, got) in sel.shortfall.items():
        assert quota == 200 and got < 200
        entry = sel.report[cat]
        assert entry["short"] == 200 - got and entry["short_because"].get(GENERATOR_CAP, 0) > 0
        counts = df[df.category == cat].gen.value_counts()
        assert counts.max() <= got // 2
        others = kept.filter(pa.compute.equal(kept["category"], cat)).to_pandas()
        others = others[~others.winner_id.isin(cands.filter(pa.compute.equal(cands["generator"], "gen-a"))["candidate_id"].to_pylist())]
        # the largest size the rule allows: every pair the other generators won, and as many of gen-a's
        assert len(others) < got // 2 + 1 and counts["gen-a"] == got - len(others) == len(others)


def test_prompt_spread_before_second_pair_and_position_balance():
    scores, cands, prompts = _scored_set(n_prompts=20, group=4)
    pairs = form_pairs(scores, RM, quorum=5)
    sel = select_pairs(pairs, prompts, _cfg(20, None, per_prompt=3), candidates=cands)
    df = sel.selected.to_pandas()
    kept = pairs.filter(pairs["kept"]).to_pandas()
    for cat in IMAGE_CATS:
        with_pairs = kept[kept.category == cat].prompt_id.nunique()
        mine = df[df.category == cat]
        assert mine.prompt_id.nunique() == min(20, with_pairs)  # one pair per prompt before any second
        pos = mine.sort_values(["sort_key", "pair_id"]).winner_position.to_numpy()  # sample order
        assert abs((pos == 0).sum() - (pos == 1).sum()) <= 1
        prefix = np.cumsum(np.where(pos == 0, 1, -1))
        assert np.abs(prefix).max() <= 1  # balanced in every prefix of the category
    assert set(df.winner_position.unique()) == {0, 1}


def test_too_easy_and_near_duplicate_rules():
    def raw(rows):
        cols = list(zip(*rows))
        return pa.table({f.name: cols[i] for i, f in enumerate(raw_scores_schema(RM))}, schema=raw_scores_schema(RM))

    # a group of 3 where the normalised gaps are known: scores 0, 1, 5 on every scorer
    rows = [(c, "p", "aesthetics", "image", *[v] * 5, None) for c, v in (("a", 0.0), ("b", 1.0), ("c", 5.0))]
    scores = add_group_stats(raw(rows), RM)
    std = float(np.std([0.0, 1.0, 5.0]))
    by_pair = lambda t: {(r["winner_id"], r["loser_id"]): r for r in t.to_pylist()}
    easy = by_pair(form_pairs(scores, RM, 5, max_margin=4.5 / std))
    assert easy[("c", "a")]["drop_reason"] == TOO_EASY  # 5 / std > 4.5 / std on every scorer
    assert easy[("c", "b")]["kept"] and easy[("b", "a")]["kept"]  # 4 / std and 1 / std
    assert easy[("c", "b")]["pair_id"] == pair_id("c", "b")

    near = "0f" * 8
    with_hash = scores.append_column("phash", pa.array([near, f"{int(near, 16) ^ 0b111:016x}", "f0" * 8]))
    dup = by_pair(form_pairs(with_hash, RM, 5, near_duplicate_bits=3))
    assert dup[("b", "a")]["drop_reason"] == NEAR_DUPLICATE  # 3 bits apart
    assert dup[("c", "a")]["kept"] and dup[("c", "b")]["kept"]
    assert by_pair(form_pairs(with_hash, RM, 5, near_duplicate_bits=2))[("b", "a")]["kept"]
    assert by_pair(form_pairs(with_hash, RM, 5))[("b", "a")]["kept"]  # rule off


def test_attach_phash_matches_a_join():
    scores, cands, _ = _scored_set(n_prompts=3, group=4)
    cands = cands.slice(1)  # one scored candidate has no candidates row: its hash is null
    got = attach_phash(scores, cands)
    want = scores.join(cands.select(["candidate_id", "phash"]), "candidate_id", join_type="left outer")
    assert got.sort_by("candidate_id").equals(want.sort_by("candidate_id"))
    assert got["phash"].null_count == 1 and got.num_rows == scores.num_rows


def test_vectorised_pair_ids_match_the_contract():
    ids = [f"{i * 7919:016x}" for i in range(50)]
    w = np.frombuffer("".join(ids).encode(), np.uint8).reshape(50, 16)
    got = pair_ids(w, w[::-1]).to_pylist()
    assert got == [pair_id(a, b) for a, b in zip(ids, ids[::-1])]


# -- pHash ------------------------------------------------------------------------------------------

def _picture(seed: int) -> np.ndarray:
    """A smooth photo-like picture: a coarse random colour field upsampled bicubically."""
    small = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((160, 128), Image.Resampling.BICUBIC))


def test_phash_dct_matches_direct_computation():
    from scipy.fft import dct

    luma = np.random.default_rng(1).random((3, 32, 32)) * 255
    got = phash_luma(luma)
    for i in range(3):
        n = np.arange(32)
        direct = np.array([[sum(
            luma[i, x, y] * 4 * np.cos(np.pi * u * (2 * x + 1) / 64) * np.cos(np.pi * v * (2 * y + 1) / 64)
            for x in n for y in n) for v in range(8)] for u in range(8)])
        assert np.allclose(direct, dct(dct(luma[i], axis=0), axis=1)[:8, :8])
        bits = (direct > np.median(direct)).ravel()
        assert int(got[i]) == int("".join("1" if b else "0" for b in bits), 2)


def test_phash_properties():
    a, b = _picture(0), _picture(10)
    ha = phash_hex(a)
    assert len(ha) == 16 and phash_hex(a.copy()) == ha
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=60)
    again = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    words, ok = hex_words([ha, phash_hex(again), phash_hex(b)], 1)
    assert ok.all()
    assert hamming(words[:1], words[:1])[0] == 0
    assert hamming(words[:1], words[1:2])[0] <= 4  # a lossy re-encode barely moves the hash
    assert hamming(words[:1], words[2:3])[0] >= 16  # a different picture is far
    video = np.stack([a] * 5 + [b] * 4)
    hv = phash_hex(video)
    assert len(hv) == 64 and hv[:16] == ha and hv[-16:] == phash_hex(b)  # frames 0, 3, 5, 8 of 9
    vw, vok = hex_words([hv, None, "xyz" * 21 + "0"], 4)
    assert vok.tolist() == [True, False, False]
    assert hamming(vw[:1], vw[:1])[0] == 0


def test_phash_rejects_bad_shapes():
    with pytest.raises(ValueError, match="phash_hex expects"):
        phash_hex(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="phash_luma expects"):
        phash_luma(np.zeros((2, 16, 16)))


def _full(schema: pa.Schema, t: pa.Table) -> pa.Table:
    """`t`'s columns, every other field of `schema` null."""
    return pa.table({f.name: t[f.name] if f.name in t.column_names else pa.nulls(t.num_rows, f.type) for f in schema},
                    schema=schema)


def _write_by_category(table, rows: pa.Table, name: str) -> None:
    """`rows` as finished units of `table`, one per category (a build's units never mix categories)."""
    from schemas.units import UnitStats

    for cat in sorted(set(rows["category"].to_pylist())):
        mine = rows.filter(pa.compute.equal(rows["category"], cat))
        table.write_unit(f"{name}-{cat}", mine, UnitStats(n_in=mine.num_rows, n_out=mine.num_rows))


def test_build_pair_and_select_stages_on_both_engines(ray_session, tmp_path, monkeypatch):
    """The build's pair/select stages from tables on disk: their units in this process and as Ray tasks give
    identical pairs and selected tables, the pHash comes from the candidates table, and
    selection_report.json explains a capped category."""
    import json

    from pipeline.build import Build
    from pipeline.executor import Executor
    from schemas.tables import CANDIDATES, PROMPTS

    on_ray: list[str] = []
    tasks = Executor._tasks

    def spy(self, stage, units):  # which stages the executor ran as Ray tasks
        on_ray.append(stage.name)
        yield from tasks(self, stage, units)

    monkeypatch.setattr(Executor, "_tasks", spy)
    scores, cands, prompts = _scored_set(n_prompts=8, group=4)
    hashes = cands["phash"].to_pylist()
    hashes[1::4] = hashes[0::4]  # the first two candidates of every group look the same
    hashes[0] = None  # and one candidate has no hash: never a duplicate
    cands = cands.set_column(3, "phash", pa.array(hashes))
    category = dict(zip(scores["prompt_id"].to_pylist(), scores["category"].to_pylist()))
    prompts = prompts.append_column("category", pa.array([category[p] for p in prompts["prompt_id"].to_pylist()]))
    pairs, selected, ran = {}, {}, {}
    for columnar in ("local", "ray"):
        root = tmp_path / columnar
        data = {**SMALL, "output_dir": str(root), "categories": {c: {"quota": 5, "prompts": 1} for c in IMAGE_CATS},
                "scoring": {"reward_models": [{"name": m} for m in RM]},
                "pairing": {"quorum": 5, "min_margin": 0.1, "max_margin": 2.0},
                "selection": {"max_winner_generator_share": 0.4}, "ray": {"columnar": columnar}}
        data["generators"] = [g for g in SMALL["generators"] if g["name"] == "tiny-sd15"]
        setup = Build(parse_config(data))
        _write_by_category(setup.table("scores"), _full(setup.table("scores").schema, scores), "scores")  # + video metrics (null)
        _write_by_category(setup.table("candidates"), _full(CANDIDATES, cands), "candidates")
        _write_by_category(setup.table("prompts"), _full(PROMPTS, prompts), "prompts")
        on_ray.clear()
        result = Build(parse_config(data)).run(["pair", "select"])
        ran[columnar] = list(on_ray)
        pairs[columnar] = pq.read_table(root / "pairs")
        selected[columnar] = pq.read_table(root / "selected")
        summary = {s.stage: s for s in result.summaries}
        report = json.loads((root / "selection_report.json").read_text())
    assert ran == {"local": [], "ray": ["pair", "select"]}  # the units really ran as Ray tasks the second time
    assert pairs["local"].num_rows > 0 and pairs["ray"].equals(pairs["local"])
    assert selected["local"].num_rows > 0 and selected["ray"].equals(selected["local"])
    reasons = pairs["local"].to_pandas().drop_reason.value_counts().to_dict()
    assert reasons["near_duplicate"] > 0 and summary["pair"].dropped["near_duplicate"] == reasons["near_duplicate"]
    assert reasons["too_easy"] > 0
    for cat in IMAGE_CATS:
        entry = report[cat]
        assert entry["selected"] + entry["short"] == 5
        assert max(entry["winner_generators"].values(), default=0) <= int(0.4 * entry["selected"])
        if entry["short"]:
            assert cat in summary["select"].note and "selection_report.json" in summary["select"].note


def test_lookup_ids_positions_absent_and_non_hex():
    from pipeline.phash import lookup_ids

    keys = pa.array(["00000000000000ff", "0000000000000001", "ffffffffffffffff", "0000000000000010"])
    needles = pa.chunked_array([["0000000000000010", "1234567890abcdef"], ["ffffffffffffffff", "00000000000000ff"]])
    assert lookup_ids(needles, keys).tolist() == [3, -1, 2, 0]
    assert lookup_ids(pa.array(["not-a-hex-id"]), keys) is None  # callers fall back to Arrow's lookup
    assert lookup_ids(needles, pa.array([], pa.string())).tolist() == [-1, -1, -1, -1]
