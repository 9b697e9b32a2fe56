"""`vipo inspect`: what a built dataset holds, from its manifests and sidecars (no media decoded)."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from schemas.shard import MANIFEST_NAME

_COLUMNS = ("category", "winner_generator", "loser_generator", "agree", "n_scorers")  # what is counted, of each sidecar


def summarise(root: str | Path) -> dict[str, dict]:
    """Per modality: samples, shards, and counts by category, winner/loser generator and agreement."""
    root = Path(root)
    shards = root / "shards" if (root / "shards").is_dir() else root
    out = {}
    for manifest_path in sorted(shards.glob(f"*/{MANIFEST_NAME}")):
        manifest = json.loads(manifest_path.read_text())
        cats: Counter[str] = Counter()
        gens: Counter[str] = Counter()
        agree: Counter[str] = Counter()
        for shard in manifest["shards"]:
            side = pq.read_table(manifest_path.parent / shard["sidecar"], columns=list(_COLUMNS)).to_pandas()
            cats.update(side["category"])
            gens.update(side["winner_generator"] + " > " + side["loser_generator"])
            agree.update(f"{a}/{n}" for a, n in zip(side["agree"], side["n_scorers"]))
        out[manifest_path.parent.name] = {
            "samples": manifest["num_samples"],
            "shards": len(manifest["shards"]),
            "categories": dict(sorted(cats.items())),
            "generator_pairs": dict(sorted(gens.items())),
            "agreement": dict(sorted(agree.items())),
        }
    return out
