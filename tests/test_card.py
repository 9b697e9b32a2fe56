"""The dataset card: the rater agreement matrix (exact shares on hand-made pairs), the card's plots (valid,
deterministic PNGs every README reference resolves to) and its tables."""
from __future__ import annotations

import re
import struct
import zlib

import numpy as np
import pyarrow as pa
import pytest

from pipeline.card import (
    VLM_RATER,
    agreement_matrix,
    build_card,
    side_scores,
    write_card,
)
from schemas.config import parse_config
from schemas.tables import (
    REWARD_MODEL_NAMES,
    pairs_schema,
    scores_schema,
    selected_schema,
)
from tests.conftest import small_config

SCORERS = list(REWARD_MODEL_NAMES)
NAN = float("nan")


def _pairs(margins: dict[str, list[float]]) -> pa.Table:
    n = len(next(iter(margins.values())))
    return pa.table({"pair_id": [f"p{i}" for i in range(n)], "modality": ["image"] * n,
                     **{f"margin_{s}": pa.array(v, pa.float32()) for s, v in margins.items()}})


# Three raters over four pairs (margins winner minus loser; 0 is a tie, NaN a missing score):
#   p0: a+ b+ c-    p1: a+ b- c-    p2: a- b- c tie    p3: a+ b NaN c+
HAND = {"a": [1.0, 2.0, -1.0, 0.5], "b": [3.0, -1.0, -2.0, NAN], "c": [-1.0, -0.5, 0.0, 4.0]}


def test_agreement_counts_only_pairs_both_raters_decide():
    got = agreement_matrix(_pairs(HAND), ["a", "b", "c"])
    assert got.raters == ["a", "b", "c"]
    np.testing.assert_array_equal(got.pairs, [[4, 3, 3], [3, 3, 2], [3, 2, 3]])
    # a-b: p0 p1 p2 rated by both, same on p0 p2; a-c: p0 p1 p3, same on p3; b-c: p0 p1, same on p1
    np.testing.assert_allclose(got.share, [[1, 2 / 3, 1 / 3], [2 / 3, 1, 1 / 2], [1 / 3, 1 / 2, 1]])


def test_the_vlm_is_a_sixth_rater_on_the_pairs_it_judged():
    judgements = pa.table({"pair_id": ["p0", "p1", "p2", "elsewhere"], "p_winner": pa.array([0.9, 0.2, 0.5, 0.9], pa.float32())})
    got = agreement_matrix(_pairs(HAND), ["a", "b", "c"], judgements)
    assert got.raters == ["a", "b", "c", VLM_RATER]
    # the VLM prefers the winner of p0, the loser of p1, neither of p2 (0.5); p3 is unjudged
    np.testing.assert_array_equal(got.pairs[3], [2, 2, 2, 2])
    np.testing.assert_allclose(got.share[3], [1 / 2, 1, 1 / 2, 1])
    np.testing.assert_allclose(got.share[:3, :3], agreement_matrix(_pairs(HAND), ["a", "b", "c"]).share)
    unrelated = pa.table({"pair_id": ["x"], "p_winner": pa.array([0.9], pa.float32())})
    assert agreement_matrix(_pairs(HAND), ["a", "b", "c"], unrelated).raters == ["a", "b", "c"]


def test_a_rater_pair_with_no_common_decision_is_blank():
    got = agreement_matrix(_pairs({"a": [1.0, 0.0], "b": [0.0, -1.0]}), ["a", "b"])
    assert np.isnan(got.share[0, 1]) and got.pairs[0, 1] == 0 and got.share[0, 0] == 1.0


def test_side_scores_takes_winner_and_loser_rows_and_drops_missing():
    scores = pa.table({"candidate_id": ["w", "l", "v"], "pickscore": pa.array([21.0, 20.5, None], pa.float32())})
    selected = pa.table({"winner_id": ["w", "v"], "loser_id": ["l", "w"]})
    (win, lose), = side_scores(selected, scores, ["pickscore"]).values()
    assert win.tolist() == [21.0] and lose.tolist() == [20.5, 21.0]


# A card from synthetic tables: 2 image categories, 3 generators, the skew known exactly.


def _table(schema: pa.Schema, n: int, **columns) -> pa.Table:
    """`columns` given, every other field of the schema null (the tables carry more than the card reads)."""
    return pa.table({f.name: columns.get(f.name, pa.nulls(n, f.type)) for f in schema}, schema=schema)


@pytest.fixture(scope="module")
def card_inputs(tmp_path_factory):
    return synthetic_card_inputs(tmp_path_factory.mktemp("card"))


@pytest.fixture(scope="module")
def card(card_inputs):
    """(markdown, plots) of the synthetic inputs, rendered once for the tests that only read them."""
    cfg, manifests, selected, tables = card_inputs
    return build_card(cfg, manifests, selected, **tables)


def synthetic_card_inputs(tmp_path):
    """(config, manifests, selected, {scores, pairs}) of a small image-only build, made up."""
    data = small_config(tmp_path / "cache", tmp_path / "out")
    data["categories"] = {"aesthetics": {"quota": 6, "prompts": 3}, "composition": {"quota": 4, "prompts": 2}}
    cfg = parse_config(data)
    rng = np.random.default_rng(0)
    n_cand = 20
    cids = [f"c{i:02d}" for i in range(n_cand)]
    cols = {"candidate_id": pa.array(cids), "modality": pa.array(["image"] * n_cand)}
    for s in SCORERS:
        cols[s] = pa.array(rng.normal(size=n_cand).astype(np.float32))
    scores = _table(scores_schema(SCORERS), n_cand, **cols)
    cats = ["aesthetics"] * 6 + ["composition"] * 4
    n = len(cats)
    sel_cols = {"pair_id": pa.array([f"{i:016x}" for i in range(n)]), "category": pa.array(cats), "modality": pa.array(["image"] * n),
                "winner_id": pa.array(cids[:n]), "loser_id": pa.array(cids[n:2 * n]),
                **{f"margin_{s}": pa.array(rng.random(n).astype(np.float32)) for s in SCORERS}}
    selected = _table(selected_schema(SCORERS), n, **sel_cols)
    formed = _table(pairs_schema(SCORERS), 8, pair_id=pa.array([f"f{i}" for i in range(8)]), modality=pa.array(["image"] * 8),
                    **{f"margin_{s}": pa.array(rng.normal(size=8).astype(np.float32)) for s in SCORERS})
    manifests = {"image": {
        "split": "train", "categories": {"aesthetics": 6, "composition": 4},
        "winner_generators": {"sd15": 5, "sdxl": 4, "flux-dev": 1}, "agreement": {"5": 10},
        "winner_generators_by_category": {"aesthetics": {"sd15": 4, "sdxl": 2}, "composition": {"flux-dev": 1, "sd15": 1, "sdxl": 2}},
        "shards": [{"name": "train-000000.tar", "samples": 10, "sha256": "ab" * 32}],
    }}
    return cfg, manifests, selected, {"scores": scores, "pairs": formed}


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def _png_chunks(data: bytes) -> list[bytes]:
    chunks, at = [], 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        body = data[at + 8 : at + 8 + length]
        assert zlib.crc32(kind + body) == struct.unpack(">I", data[at + 8 + length : at + 12 + length])[0]
        chunks.append(kind)
        at += 12 + length
    return chunks


def test_the_card_references_exactly_its_plots_which_are_clean_pngs(card):
    text, plots = card
    assert sorted(plots) == ["image-agreement.png", "image-margins.png", "image-scores.png", "winner-generators.png"]
    assert sorted(re.findall(r"!\[[^]]*\]\(plots/([^)]+)\)", text)) == sorted(plots)
    for name, data in plots.items():
        assert _png_chunks(data)[-1] == b"IEND" and b"tEXt" not in _png_chunks(data), name  # no Software text
    assert _png_size(plots["winner-generators.png"]) == (900, 280)  # 9 x (0.5 * 2 categories + 1.8) in at 100 dpi
    assert _png_size(plots["image-scores.png"]) == (1200, 610)  # 5 reward models: 2 rows of 3 panels


def test_plots_are_the_same_bytes_whatever_the_rc_params(card_inputs, card):
    import matplotlib as mpl

    cfg, manifests, selected, tables = card_inputs
    with mpl.rc_context({"lines.linewidth": 7.0, "axes.facecolor": "red", "font.size": 20, "savefig.dpi": 300}):
        again = build_card(cfg, manifests, selected, **tables)
    assert again == card


def test_the_card_tables_hold_the_exact_counts_and_shares(card_inputs, card):
    _, _, _, tables = card_inputs
    text, _ = card
    assert "| aesthetics | sd15 | 4 | 0.667 |" in text and "| composition | flux-dev | 1 | 0.250 |" in text
    assert "| aesthetics | image | 6 | 6 |" in text
    agreement = agreement_matrix(tables["pairs"], SCORERS)
    row = "| pickscore | " + " | ".join(f"{v:.3f}" for v in agreement.share[0]) + " |"
    assert row in text and "Share of the 8 formed pairs" in text
    assert "```yaml\nname: vipo-test\n" in text  # the exact config that built it


def test_without_the_tables_the_card_leaves_their_plots_out(card_inputs):
    cfg, manifests, selected, _ = card_inputs
    text, plots = build_card(cfg, manifests, selected)
    assert sorted(plots) == ["image-margins.png", "winner-generators.png"]
    assert "agreement.png" not in text and "scores.png" not in text


def test_write_card_lands_files_and_removes_stale_plots(card_inputs, tmp_path):
    cfg, manifests, selected, tables = card_inputs
    out = tmp_path / "build"
    stale = out / "card" / "plots" / "video-margins.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    readme = write_card(out, cfg, manifests, selected, **tables)
    assert readme == out / "card" / "README.md" and readme.read_text().startswith("---\n")
    assert sorted(p.name for p in (out / "card" / "plots").iterdir()) == [
        "image-agreement.png", "image-margins.png", "image-scores.png", "winner-generators.png"]


def test_the_card_from_the_build_tables_is_the_card_of_their_rows(card_inputs, tmp_path):
    """`write_card_from_tables` reads the catalogue's tables (only the columns the card uses): the same
    README and plots as `write_card` on the rows themselves."""
    from pipeline.card import write_card_from_tables
    from pipeline.catalogue import Table
    from schemas.units import UnitStats

    cfg, manifests, selected, tables = card_inputs
    handles = {}
    for name, rows in {"selected": selected, **tables}.items():
        handles[name] = Table(str(tmp_path / "build" / name), rows.schema)
        handles[name].write_unit(f"{name}-0", rows, UnitStats(n_in=rows.num_rows))
    from_tables = write_card_from_tables(tmp_path / "a", cfg, manifests, handles, SCORERS)
    from_rows = write_card(tmp_path / "b", cfg, manifests, selected, **tables)
    assert from_tables.read_text() == from_rows.read_text()
    plots = lambda d: {p.name: p.read_bytes() for p in (d / "card" / "plots").iterdir()}
    assert plots(tmp_path / "a") == plots(tmp_path / "b") and len(plots(tmp_path / "a")) == 4
