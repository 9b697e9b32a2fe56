"""A candidate's record in the shard json (winner / loser): its generation fields, every score and
every group-relative advantage. Built once per selected candidate, columnar, where the candidates and
scores of a category are at hand (the select stage), and carried to the writer as canonical JSON."""
from __future__ import annotations

import math
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from schemas.ids import canonical_json

RECORD_COLS = ("candidate_id", "generator", "seed", "params", "width", "height", "num_frames", "fps", "media_path")
_ADVANTAGE_SUFFIX = "_advantage"  # scores_schema's per-scorer advantage columns: f"{scorer}_advantage"
_SCORE, _ADV = "score:", "advantage:"  # prefixes of the flat record columns


def _num(x: Any) -> Any:
    """JSON-safe scalar: NaN -> None."""
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


def advantage_columns(schema: pa.Schema, score_cols: list[str]) -> dict[str, str]:
    """Shard-json advantage name -> scores column: one per score column, then every other
    `*_advantage` column the scores schema carries (e.g. `combined_advantage` -> "combined")."""
    out = {c: f"{c}{_ADVANTAGE_SUFFIX}" for c in score_cols}
    taken = set(out.values())
    for name in schema.names:
        if name.endswith(_ADVANTAGE_SUFFIX) and name not in taken:
            out[name.removesuffix(_ADVANTAGE_SUFFIX)] = name
    return out


def flat_records(candidates: pa.Table, scores: pa.Table, score_cols: list[str], needed: pa.Array) -> pa.Table:
    """One flat row per candidate in `needed`: its record fields, `score:<c>` and `advantage:<name>`
    columns (null where the candidate has no scores row). Columnar: no Python loop over rows."""
    cand = candidates.filter(pc.is_in(candidates["candidate_id"], value_set=needed)).select(list(RECORD_COLS))
    where = pc.index_in(cand["candidate_id"], value_set=scores["candidate_id"])
    columns = {**{f"{_SCORE}{c}": c for c in score_cols},
               **{f"{_ADV}{k}": col for k, col in advantage_columns(scores.schema, score_cols).items()}}
    picked = scores.select(list(columns.values())).take(where)
    for flat, col in columns.items():
        cand = cand.append_column(flat, picked[col])
    return cand.combine_chunks()


def record(row: dict) -> dict:
    """A flat record row -> the winner/loser record of the shard json (media_path kept for the writer)."""
    rec = {k: row[k] for k in RECORD_COLS}
    # params stay canonical json text: their keys differ by generator, and readers that infer a
    # schema from the first samples (datasets' webdataset builder) would drop or mistype the rest.
    rec["scores"] = {k.removeprefix(_SCORE): _num(v) for k, v in row.items() if k.startswith(_SCORE)}
    rec["advantages"] = {k.removeprefix(_ADV): _num(v) for k, v in row.items() if k.startswith(_ADV)}
    return rec


def record_table(candidates: pa.Table, scores: pa.Table, score_cols: list[str], needed: pa.Array) -> pa.Table:
    """(candidate_id, record): each needed candidate's record as canonical JSON."""
    flat = flat_records(candidates, scores, score_cols, needed)
    return pa.table({"candidate_id": flat["candidate_id"],
                     "record": pa.array([canonical_json(record(r)) for r in flat.to_pylist()], pa.string())})
