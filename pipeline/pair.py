"""The pair stage: every pair within a prompt group, oriented by the reward models' majority, kept only
when at least `quorum` of them prefer the same winner (the cross-model consistency rule), the pair is
not trivially easy, and winner and loser are not near-duplicates.

Columnar all the way: a prompt group of k candidates gives k(k-1)/2 index pairs made with numpy, the
rules run on score matrices in chunks (bounded memory), ids are taken with Arrow kernels. The stage
runs one unit per category (prompt groups never cross categories), as Ray tasks past one machine.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from pipeline.catalogue import Table
from pipeline.phash import PHASH_FRAMES, hamming, hex_words, lookup_ids
from pipeline.stage import TaskStage
from schemas.ids import _SEP, ID_HEX, pair_id
from schemas.tables import pairs_schema
from schemas.units import Unit, make_unit

# Drop reasons, stored in the pairs table so a build can be explained (first that applies wins).
MISSING_SCORE = "missing_score"  # a scorer has no score for one of the two
TIE = "tie"  # no scorer separates the two beyond min_margin
NO_MAJORITY = "no_majority"  # as many scorers prefer one as the other
BELOW_QUORUM = "below_quorum"  # a majority, but fewer than `quorum` scorers agree
NEAR_DUPLICATE = "near_duplicate"  # winner and loser pHashes within near_duplicate_bits
TOO_EASY = "too_easy"  # every agreeing scorer's normalised margin exceeds max_margin
REASONS: tuple[str, ...] = (MISSING_SCORE, TIE, NO_MAJORITY, BELOW_QUORUM, NEAR_DUPLICATE, TOO_EASY)

CHUNK_ROWS = 500_000  # candidates paired at once (~1.8M pairs at groups of 8): bounds the temporaries
PAIR_THREADS = min(4, os.cpu_count() or 1)  # blocks paired at once (each holds one block's temporaries)


@dataclass(frozen=True)
class PairRules:
    """The pairing rules of `schemas.config.PairingConfig`, resolved (quorum as a number)."""

    quorum: int
    min_margin: float = 0.0
    max_margin: float | None = None
    near_duplicate_bits: int | None = None


class _Strings:
    """A string column to gather rows from: fixed-width ids as a byte matrix (numpy fancy indexing),
    anything else through Arrow's take."""

    def __init__(self, col: pa.ChunkedArray | pa.Array):
        self.small = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        arr = self.small.cast(pa.large_string())
        lengths = pc.utf8_length(arr)
        lo, hi = pc.min_max(lengths).values() if len(arr) else (pa.scalar(0), pa.scalar(0))
        self.arr, self.matrix = arr, None
        if arr.null_count == 0 and len(arr) and lo.as_py() == hi.as_py() and lo.as_py() > 0:
            offsets = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset : arr.offset + len(arr) + 1]
            data = np.frombuffer(arr.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
            self.matrix = data.reshape(len(arr), lo.as_py())

    def bytes_at(self, idx: np.ndarray) -> np.ndarray | None:
        return None if self.matrix is None else self.matrix[idx]

    def take(self, idx: np.ndarray) -> pa.Array:
        if self.matrix is None:
            return self.small.take(pa.array(idx))
        return _fixed_strings(self.matrix[idx])


def _fixed_strings(rows: np.ndarray) -> pa.Array:
    """(n, width) bytes -> a string array without copying the bytes again (one block stays < 2 GiB)."""
    n, width = rows.shape
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(rows))])


def pair_ids(winner: np.ndarray, loser: np.ndarray) -> pa.Array:
    """`schemas.ids.pair_id` for whole columns, from (n, width) byte matrices of the ids.

    One sha256 per pair is unavoidable (the id is a contract); the messages are cut from one buffer.
    """
    n = len(winner)
    sep = np.frombuffer(_SEP.encode(), np.uint8)
    msg = np.concatenate([winner, np.broadcast_to(sep, (n, len(sep))), loser], axis=1)
    width, buf, sha = msg.shape[1], msg.tobytes(), hashlib.sha256
    digest = b"".join([sha(buf[i : i + width]).digest()[: ID_HEX // 2] for i in range(0, len(buf), width)])
    b = np.frombuffer(digest, np.uint8)
    hexed = np.empty(b.size * 2, np.uint8)
    hexed[0::2], hexed[1::2] = _HEX_DIGITS[b >> 4], _HEX_DIGITS[b & 15]
    return _fixed_strings(hexed.reshape(n, ID_HEX))


_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", np.uint8)


def _index_pairs(group_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row index pairs (a < b) within each run of equal codes (rows sorted by group)."""
    n = len(group_codes)
    if n < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    starts = np.flatnonzero(np.r_[True, group_codes[1:] != group_codes[:-1]])
    sizes = np.diff(np.r_[starts, n])
    ia, ib = [], []
    for k in np.unique(sizes[sizes >= 2]):  # one vectorised block per distinct group size
        s = starts[sizes == k][:, None]
        ti, tj = np.triu_indices(k, 1)
        ia.append((s + ti).ravel())
        ib.append((s + tj).ravel())
    if not ia:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    a, b = np.concatenate(ia), np.concatenate(ib)
    order = np.argsort(a, kind="stable")  # group order, then (i, j) within the group
    return a[order], b[order]


def attach_phash(scores: pa.Table, candidates: pa.Table) -> pa.Table:
    """`scores` with the candidates' `phash` column (null where a candidate has none).

    Hex ids are matched as uint64 keys with a sorted search, which at 10M rows is several times faster
    than a hash join on the strings; other ids fall back to Arrow's join.
    """
    at = lookup_ids(scores["candidate_id"], candidates["candidate_id"])
    if at is None:
        return scores.join(candidates.select(["candidate_id", "phash"]), "candidate_id", join_type="left outer")
    phash = candidates["phash"].combine_chunks().take(pa.array(np.maximum(at, 0), mask=at < 0))
    return scores.append_column("phash", phash)


def _group_order(t: pa.Table) -> np.ndarray:
    """Row order by (prompt_id, candidate_id): integer sorts when the ids are hex (always, in a build)."""
    pk, pv = hex_words(t["prompt_id"], 1)
    ck, cv = hex_words(t["candidate_id"], 1)
    if pv.all() and cv.all():
        return np.lexsort((ck[:, 0], pk[:, 0]))
    return pc.sort_indices(t, [("prompt_id", "ascending"), ("candidate_id", "ascending")]).to_numpy()


def form_pairs(
    scores: pa.Table,
    scorers: list[str],
    quorum: int,
    min_margin: float = 0.0,
    *,
    max_margin: float | None = None,
    near_duplicate_bits: int | None = None,
) -> pa.Table:
    """All within-group pairs with margins, agreement and drop reason, in (prompt_id, candidate order).

    `scores`: the scores table (a `phash` column joined from candidates enables the near-duplicate rule).
    Margins are raw score differences (winner - loser); the rules use them over the group's std.
    pair_id is computed for the kept pairs only: nothing downstream references a dropped pair by id, its
    identity is (winner_id, loser_id), and hashing every pair would cost most of the stage at scale.
    """
    rules = PairRules(quorum, min_margin, max_margin, near_duplicate_bits)
    schema = pairs_schema(scorers)
    if scores.num_rows < 2:
        return schema.empty_table()
    needed = ["candidate_id", "prompt_id", "category", "modality", *scorers, *(f"{s}_group_std" for s in scorers)]
    if near_duplicate_bits is not None and "phash" in scores.column_names:
        needed.append("phash")
    t = scores.select(needed)
    t = t.take(pa.array(_group_order(t)))
    codes = pc.dictionary_encode(t["prompt_id"]).combine_chunks().indices.to_numpy()
    x = np.column_stack([t[s].to_numpy().astype(np.float32) for s in scorers])
    std = np.column_stack([t[f"{s}_group_std"].to_numpy().astype(np.float32) for s in scorers])
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_std = np.where(std > 0, 1.0 / std, 0.0).astype(np.float32)  # zero spread: nobody votes
    hashes = None
    if "phash" in t.column_names:
        hashes = {k: hex_words(t["phash"], k) for k in (1, PHASH_FRAMES)}
    strings = {c: _Strings(t[c]) for c in ("candidate_id", "prompt_id", "category", "modality")}

    def block(edges: tuple[int, int]) -> pa.RecordBatch | None:
        r0, r1 = edges
        ia, ib = _index_pairs(codes[r0:r1])
        return _chunk(strings, x, inv_std, hashes, ia + r0, ib + r0, scorers, rules, schema) if len(ia) else None

    # Whole prompt groups per block (bounded index arrays). numpy and Arrow release the GIL, so blocks on
    # a few threads use the machine's cores; map keeps block order, so the table is the same either way.
    with ThreadPoolExecutor(max_workers=PAIR_THREADS) as pool:
        batches = [b for b in pool.map(block, _blocks(codes, CHUNK_ROWS)) if b is not None]
    return pa.Table.from_batches(batches, schema)


def _blocks(codes: np.ndarray, rows: int) -> list[tuple[int, int]]:
    """Row ranges of about `rows` rows that never split a prompt group (rows sorted by group)."""
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    at = np.minimum(np.searchsorted(starts, np.arange(0, len(codes), rows)), len(starts) - 1)
    edges = [*np.unique(starts[at]).tolist(), len(codes)]
    return list(itertools.pairwise(edges))


def _chunk(strings, x, inv_std, hashes, ia, ib, scorers, rules: PairRules, schema) -> pa.RecordBatch:
    diff = x[ia] - x[ib]  # float32, like the scores and the stored margins
    norm = diff * inv_std[ia]
    votes_a = (norm > rules.min_margin).sum(axis=1)
    votes_b = (norm < -rules.min_margin).sum(axis=1)
    a_wins = votes_a >= votes_b
    agree = np.where(a_wins, votes_a, votes_b)
    margins = np.where(a_wins[:, None], diff, -diff)
    conds = [np.isnan(diff).any(axis=1), (votes_a == 0) & (votes_b == 0), votes_a == votes_b, agree < rules.quorum]
    if hashes is not None:
        dist = np.full(len(ia), np.nan)
        for words, valid in hashes.values():
            ok = valid[ia] & valid[ib]
            dist[ok] = hamming(words[ia[ok]], words[ib[ok]])
        conds.append(dist <= rules.near_duplicate_bits)  # NaN (unknown hash) never counts as a duplicate
    else:
        conds.append(np.zeros(len(ia), bool))
    if rules.max_margin is not None:
        signed = np.where(a_wins[:, None], norm, -norm)
        weakest = np.where(signed > rules.min_margin, signed, np.inf).min(axis=1)  # over the agreeing scorers
        conds.append(weakest > rules.max_margin)
    else:
        conds.append(np.zeros(len(ia), bool))
    code = np.select(conds, np.arange(len(REASONS)), default=-1)
    kept = code < 0
    w_idx, l_idx = np.where(a_wins, ia, ib), np.where(a_wins, ib, ia)
    cand = strings["candidate_id"]
    keep_rows = np.flatnonzero(kept)
    win_b, lose_b = cand.bytes_at(w_idx[keep_rows]), cand.bytes_at(l_idx[keep_rows])
    if win_b is None:  # ids of varying width (hand-made tables): encode them one by one
        w, lo = cand.take(w_idx[keep_rows]).to_pylist(), cand.take(l_idx[keep_rows]).to_pylist()
        kept_ids = pa.array([pair_id(a, b) for a, b in zip(w, lo)], pa.string())
    else:
        kept_ids = pair_ids(win_b, lose_b)
    ids = _scatter_valid(kept_ids, kept)
    reason = pa.array(list(REASONS), pa.string()).take(pa.array(np.where(kept, 0, code), mask=kept))
    cols = {
        "pair_id": ids,
        "prompt_id": strings["prompt_id"].take(ia),
        "category": strings["category"].take(ia),
        "modality": strings["modality"].take(ia),
        "winner_id": cand.take(w_idx),
        "loser_id": cand.take(l_idx),
    }
    for i, s in enumerate(scorers):
        cols[f"margin_{s}"] = pa.array(margins[:, i])
    cols["agree"] = pa.array(agree.astype(np.int32))
    cols["n_scorers"] = pa.array(np.full(len(ia), len(scorers), np.int32))
    cols["kept"] = pa.array(kept)
    cols["drop_reason"] = reason
    return pa.RecordBatch.from_arrays([cols[f.name] for f in schema], schema=schema)


def _scatter_valid(values: pa.Array, valid: np.ndarray) -> pa.StringArray:
    """A string column with `values` at the rows where `valid` is set, in order, null elsewhere: the
    values' bytes are reused and only offsets and the validity bitmap are built (no take, no if_else)."""
    values = values.cast(pa.string())
    n = len(valid)
    if len(values) == 0:
        return pa.nulls(n, pa.string())
    vo = np.frombuffer(values.buffers()[1], np.int32)[values.offset : values.offset + len(values) + 1]
    offsets = np.zeros(n + 1, np.int32)
    offsets[1:][valid] = np.diff(vo)
    offsets = np.cumsum(offsets, dtype=np.int32) + vo[0]
    bitmap = np.packbits(valid, bitorder="little")
    return pa.Array.from_buffers(
        pa.string(), n, [pa.py_buffer(bitmap), pa.py_buffer(offsets), values.buffers()[2]], null_count=int(n - valid.sum())
    )


def kept_first(pairs: pa.Table) -> pa.Table:
    """The kept pairs, then the dropped ones, each in group order: the judge reads a prefix."""
    kept = pairs["kept"].combine_chunks() if pairs.num_rows else pa.array([], pa.bool_())
    return pa.concat_tables([pairs.filter(kept), pairs.filter(pc.invert(kept))])


@dataclass
class PairStage(TaskStage):
    """One unit per category: its scores (prompt groups never cross categories), pHashes from the
    candidates table, every within-group pair with margins, agreement and drop reason."""

    scores: Table | None = None
    candidates: Table | None = None
    pairs: Table | None = None
    scorers: tuple[str, ...] = ()
    rules: PairRules | None = None

    name: ClassVar[str] = "pair"
    verb: ClassVar[str] = "paired"

    def outputs(self) -> tuple[Table, ...]:
        return (self.pairs,)

    def plan(self) -> list[Unit]:
        recs = self.need(self.scores, "score")
        by_cat: dict[str, list] = {}
        for r in recs.values():
            by_cat.setdefault(r.cluster or "", []).append(r)
        rules = dataclasses.asdict(self.rules)
        return [make_unit("pair", (cat, list(self.scorers), rules, sorted(r.id for r in rs)), key=cat,
                          rows=sum(r.rows for r in rs), category=cat)
                for cat, rs in sorted(by_cat.items())]

    def process(self, unit: Unit) -> pa.Table:
        cat = unit.param("category")
        where = ds.field("category") == cat
        scores = self.scores.read(filter=where)
        if self.rules.near_duplicate_bits is not None:  # computed at generate time, once per candidate
            scores = attach_phash(scores, self.candidates.read(["candidate_id", "phash"], filter=where))
        r = self.rules
        pairs = form_pairs(scores, list(self.scorers), r.quorum, r.min_margin, max_margin=r.max_margin,
                           near_duplicate_bits=r.near_duplicate_bits)
        kept = int(pc.sum(pairs["kept"]).as_py() or 0) if pairs.num_rows else 0
        self.count(n_in=pairs.num_rows, n_out=kept)
        for row in pc.value_counts(pairs["drop_reason"].drop_null()).to_pylist() if pairs.num_rows else []:
            self.drop(row["values"], row["counts"])
        self.stats.extra = {"kept": kept}
        return kept_first(pairs)
