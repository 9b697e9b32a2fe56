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
from collections.abc import Iterable
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


def reward_votes(scores_a: dict, scores_b: dict, scorers: list[str]) -> dict[str, int | None]:
    """Each reward model's vote (the sign of a's score minus b's; None when either is missing) and,
    with all five models, their unanimous rule (+1 / -1 when all five agree, else 0)."""
    votes: dict[str, int | None] = {}
    for s in scorers:
        a, b = scores_a.get(s), scores_b.get(s)
        votes[s] = None if a is None or b is None else _sign(a - b)
    decided = [votes[s] for s in scorers]
    if len(scorers) == len(REWARD_MODEL_NAMES) and None not in decided:
        votes["unanimous"] = 1 if all(v == 1 for v in decided) else -1 if all(v == -1 for v in decided) else 0
    return votes


def _raters(scorers: list[str], own: str) -> list[str]:
    """The study's raters: the reward models, their unanimous rule (with all five), then `own`."""
    return [*scorers, *(["unanimous"] if len(scorers) == len(REWARD_MODEL_NAMES) else []), own]


def _check_new(out: Path) -> None:
    if (out / STUDY_FILE).exists():
        raise StudyError(f"{out}: already a study folder; serve it with `cli.py annotate {out}` or choose another --study")


def sample_build(build: str | Path, out: str | Path, n: int, seed: int = 0, repeat_share: float = 0.1) -> SampleResult:
    """Sample `n` selected pairs of the build folder `build` into the study folder `out`."""
    build, out = Path(build), Path(out)
    selected = Table(str(build / "selected"), pa.schema([]))
    files = selected.files()
    if not files:
        raise StudyError(f"{build}: no selected pairs (is it a finished build folder?)")
    _check_new(out)
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
    raters = _raters(scorers, "vlm")
    store = MediaStore(media_root)

    def pair(r: dict) -> tuple[dict, bytes, bytes]:
        winner, loser = json.loads(r["winner_record"]), json.loads(r["loser_record"])
        votes = reward_votes(winner["scores"], loser["scores"], scorers)
        p = r.get("p_vlm")
        votes["vlm"] = None if p is None else _sign(round(float(p) - 0.5, 9))
        row = {"pair_id": r["pair_id"], "category": r["category"], "modality": r["modality"], "prompt": r["prompt"],
               "source_id": r["pair_id"], "ext": media_extension(r["modality"], image_format),
               **{vote_column(k): votes.get(k) for k in raters}}
        return row, store.read(winner["media_path"]), store.read(loser["media_path"])

    return _write_study(out, (pair(r) for r in chosen), raters, {"source": str(build.resolve()), "kind": "build",
                                                                  "seed": seed, "repeat_share": repeat_share})


def _write_study(out: Path, pairs: Iterable[tuple[dict, bytes, bytes]], raters: list[str], meta: dict) -> SampleResult:
    """Media (one pair's bytes in memory at a time), pairs.parquet, then study.json (last: its presence
    marks a whole study)."""
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for row, data_a, data_b in pairs:
        ext = row.pop("ext")
        for side, data in (("a", data_a), ("b", data_b)):
            rel = f"{MEDIA_DIR}/{row['pair_id']}_{side}.{ext}"
            write_bytes(out / rel, data)
            row[f"media_{side}"] = rel
        rows.append(row)
    table = pa.Table.from_pylist(rows, schema=pairs_schema(raters))
    write_atomic(out / PAIRS_FILE, lambda f: pq.write_table(table, f))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["category"]] = counts.get(row["category"], 0) + 1
    meta = {"version": STUDY_VERSION, **meta, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "raters": raters, "pairs": len(rows), "categories": dict(sorted(counts.items()))}
    write_bytes(out / STUDY_FILE, (json.dumps(meta, indent=2) + "\n").encode())
    return SampleResult(out, len(rows), meta["categories"])


AUDIT_CATEGORY = "general"  # an audited dataset (Pick-a-Pic) has no categories: one overall preference


def _sniff(data: bytes, video: bool) -> str | None:
    """The file extension the bytes' magic number says (the page serves jpg, png, webp, mp4)."""
    if video:
        return "mp4" if data[4:8] == b"ftyp" else None
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _label_vote(label_0: float | None) -> int | None:
    if label_0 is None or label_0 != label_0:
        return None
    return 1 if label_0 > 0.5 else -1 if label_0 < 0.5 else 0


def sample_audit(audit: str | Path, out: str | Path, n: int, seed: int = 0, repeat_share: float = 0.1) -> SampleResult:
    """Sample `n` scored rows of a `cli.py audit` output folder: side a is the row's image 0, the
    dataset's own human label is the rater `label`, beside the reward models and their unanimous rule.
    The images are read again from the audited input (its files must still be where the audit read them)."""
    from pipeline.audit.read import discover, read_rows
    from schemas.audit import SCORED

    audit, out = Path(audit), Path(out)
    _check_new(out)
    summary = json.loads((audit / "summary.json").read_text())
    sources = discover(summary["input"])
    if [s.path for s in sources] != summary["sources"]:
        raise StudyError(f"{audit}: its input {summary['input']} has changed since the audit (other files); audit it again")
    scorers = [m["name"] for m in summary["config"]["reward_models"]]
    tables = sorted(p for p in (audit / "scores").iterdir() if p.is_dir()) if (audit / "scores").is_dir() else []
    files = [f for t in tables for f in Table(str(t), pa.schema([])).files()]
    if not files:
        raise StudyError(f"{audit}: no scored rows (is it a finished audit folder?)")
    cols = ["row_id", "source", "row", "status", "label_0", *(f"{s}_{k}" for s in scorers for k in (0, 1))]
    rows = ds.dataset(files, format="parquet").to_table(columns=cols).to_pylist()
    rows = sorted((r for r in rows if r["status"] == SCORED), key=lambda r: _order_key(seed, r["row_id"]))[:n]
    raters = _raters(scorers, "label")

    def pairs():
        by_source: dict[int, list[dict]] = {}
        for r in rows:
            by_source.setdefault(int(r["source"]), []).append(r)
        for index, group in sorted(by_source.items()):
            raw = read_rows(sources[index], index, [int(r["row"]) for r in group])
            for r in group:
                rec = raw.get(int(r["row"]), {})
                video = bool(rec.get("video"))
                data_a, data_b = rec.get("img_0"), rec.get("img_1")
                ext = _sniff(data_a or b"", video)
                if not data_a or not data_b or ext is None or _sniff(data_b, video) != ext:
                    continue  # the input changed under the audit, or a format the page cannot show: left out
                votes = reward_votes({s: r[f"{s}_0"] for s in scorers}, {s: r[f"{s}_1"] for s in scorers}, scorers)
                votes["label"] = _label_vote(r["label_0"])
                pid = hashlib.sha256(f"vipo-study\x1f{r['row_id']}".encode()).hexdigest()[:16]
                row = {"pair_id": pid, "category": AUDIT_CATEGORY, "modality": "video" if video else "image",
                       "prompt": str(rec.get("caption") or ""), "source_id": r["row_id"], "ext": ext,
                       **{vote_column(k): votes.get(k) for k in raters}}
                yield row, data_a, data_b

    return _write_study(out, pairs(), raters, {"source": str(audit.resolve()), "kind": "audit", "seed": seed,
                                               "repeat_share": repeat_share})
