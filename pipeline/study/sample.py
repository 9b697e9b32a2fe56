"""A human study's pairs, sampled from a built dataset: stratified by category, media copied in, and
every automatic rater's verdict on each pair kept beside it for the agreement analysis.

Side a is the dataset's winner. A reward model's vote is the sign of its score difference, the
unanimous rule's is +1 / -1 when all five agree, the VLM's is the sign of its swap-debiased
P(winner better) - 1/2. The page shows a and b left or right in an order drawn per annotator, so
putting the winner on side a biases nothing.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import yaml

from pipeline.catalogue import Table
from pipeline.media import MediaStore
from pipeline.store import write_atomic, write_bytes
from schemas.errors import VipoError
from schemas.shard import media_extension
from schemas.study import MEDIA_DIR, PAIRS_FILE, STUDY_FILE, STUDY_VERSION, pairs_schema, vote_column
from schemas.tables import REWARD_MODEL_NAMES


class StudyError(VipoError, ValueError):
    """A study cannot be made from this folder (one line naming it)."""


@dataclass(frozen=True)
class SampleResult:
    folder: Path
    pairs: int
    by_category: dict[str, int]


def _order_key(seed: int, pair_id: str) -> str:
    return hashlib.sha256(f"vipo-study\x1f{seed}\x1f{pair_id}".encode()).hexdigest()


def allocate(available: dict[str, int], n: int) -> dict[str, int]:
    """`n` pairs over categories as evenly as their sizes allow (a small category gives all it has,
    the rest is shared by the others), in category order."""
    want = dict.fromkeys(available, 0)
    left = n
    open_cats = sorted(c for c, k in available.items() if k > 0)
    while left > 0 and open_cats:
        share = max(1, left // len(open_cats))
        for cat in list(open_cats):
            take = min(share, available[cat] - want[cat], left)
            want[cat] += take
            left -= take
            if want[cat] >= available[cat]:
                open_cats.remove(cat)
            if left == 0:
                break
    return {c: want[c] for c in sorted(want)}


def _sign(x: float | None) -> int | None:
    if x is None or x != x:
        return None
    return 1 if x > 0 else -1 if x < 0 else 0


def _votes(row: dict, winner: dict, loser: dict, scorers: list[str]) -> dict[str, int | None]:
    votes: dict[str, int | None] = {}
    for s in scorers:
        w, lo = winner["scores"].get(s), loser["scores"].get(s)
        votes[s] = None if w is None or lo is None else _sign(w - lo)
    decided = [votes[s] for s in scorers]
    if len(scorers) == len(REWARD_MODEL_NAMES) and None not in decided:
        votes["unanimous"] = 1 if all(v == 1 for v in decided) else -1 if all(v == -1 for v in decided) else 0
    p = row.get("p_vlm")
    votes["vlm"] = None if p is None else _sign(round(float(p) - 0.5, 9))
    return votes


def sample_build(build: str | Path, out: str | Path, n: int, seed: int = 0, repeat_share: float = 0.1) -> SampleResult:
    """Sample `n` selected pairs of the build folder `build` into the study folder `out`."""
    build, out = Path(build), Path(out)
    selected = Table(str(build / "selected"), pa.schema([]))
    files = selected.files()
    if not files:
        raise StudyError(f"{build}: no selected pairs (is it a finished build folder?)")
    if (out / STUDY_FILE).exists():
        raise StudyError(f"{out}: already a study folder; serve it with `cli.py annotate {out}` or choose another --study")
    config = yaml.safe_load((build / "config.yaml").read_text()) if (build / "config.yaml").is_file() else {}
    scorers = [r["name"] for r in config.get("scoring", {}).get("reward_models", [])] or list(REWARD_MODEL_NAMES)
    media_root = (config.get("media") or {}).get("root") or str(build / "media")
    image_format = (config.get("media") or {}).get("image_format", "jpg")
    cols = ["pair_id", "category", "modality", "prompt", "p_vlm", "winner_record", "loser_record"]
    rows = ds.dataset(files, format="parquet").to_table(columns=cols).to_pylist()
    by_cat: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: _order_key(seed, r["pair_id"])):
        by_cat.setdefault(r["category"], []).append(r)
    want = allocate({c: len(v) for c, v in by_cat.items()}, n)
    chosen = [r for cat in sorted(by_cat) for r in by_cat[cat][: want[cat]]]
    raters = [*scorers, *(["unanimous"] if len(scorers) == len(REWARD_MODEL_NAMES) else []), "vlm"]
    store = MediaStore(media_root)
    out.mkdir(parents=True, exist_ok=True)
    table_rows = []
    for r in chosen:
        winner, loser = json.loads(r["winner_record"]), json.loads(r["loser_record"])
        ext = media_extension(r["modality"], image_format)
        paths = {}
        for side, rec in (("a", winner), ("b", loser)):
            rel = f"{MEDIA_DIR}/{r['pair_id']}_{side}.{ext}"
            write_bytes(out / rel, store.read(rec["media_path"]))
            paths[side] = rel
        votes = _votes(r, winner, loser, scorers)
        table_rows.append({"pair_id": r["pair_id"], "category": r["category"], "modality": r["modality"],
                           "prompt": r["prompt"], "media_a": paths["a"], "media_b": paths["b"], "source_id": r["pair_id"],
                           **{vote_column(k): votes.get(k) for k in raters}})
    table = pa.Table.from_pylist(table_rows, schema=pairs_schema(raters))
    import pyarrow.parquet as pq

    write_atomic(out / PAIRS_FILE, lambda f: pq.write_table(table, f))
    counts = {c: k for c, k in want.items() if k}
    meta = {"version": STUDY_VERSION, "source": str(build.resolve()), "kind": "build",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seed": seed, "repeat_share": repeat_share,
            "raters": raters, "pairs": len(table_rows), "categories": counts}
    write_bytes(out / STUDY_FILE, (json.dumps(meta, indent=2) + "\n").encode())  # last: its presence marks a whole study
    return SampleResult(out, len(table_rows), counts)
