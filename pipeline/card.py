"""The dataset card (`card/README.md`, Hugging Face dataset-card style): what is in the data, how it
was made, and the exact config that made it."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import yaml

from pipeline.store import write_bytes
from schemas.categories import CATEGORIES
from schemas.config import BuildConfig
from schemas.shard import DATASET_VERSION


def _table(header: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def render_card(cfg: BuildConfig, manifests: dict[str, dict], selected: pa.Table) -> str:
    front = {
        "pretty_name": cfg.name,
        "tags": ["preference", "dpo", "text-to-image", "text-to-video", "vipo"],
        "configs": [
            {"config_name": m, "data_files": [{"split": man["split"], "path": f"shards/{m}/{man['split']}-*.tar"}]}
            for m, man in sorted(manifests.items())
        ],
    }
    quotas = {c: q.quota for c, q in cfg.categories.items()}
    counts = {}
    for man in manifests.values():
        counts.update(man["categories"])
    parts = [
        "---\n" + yaml.safe_dump(front, sort_keys=False) + "---",
        f"# {cfg.name}",
        f"A visual preference dataset built with vipo ({DATASET_VERSION}): candidates from open generators, "
        f"scored by {len(cfg.scorer_names)} reward models ({', '.join(cfg.scorer_names)}); a pair is kept only "
        f"when at least {cfg.quorum} of them prefer the same winner.",
        "## Pairs per category",
        _table(
            ("category", "modality", "pairs", "quota"),
            [(c, CATEGORIES[c].modality, counts.get(c, 0), quotas[c]) for c in cfg.categories],
        ),
    ]
    for modality, man in sorted(manifests.items()):
        parts += [
            f"## {modality}: winner generators",
            _table(("generator", "wins"), sorted(man["winner_generators"].items())),
            f"## {modality}: reward-model agreement",
            _table(("models agreeing", "pairs"), sorted(man["agreement"].items())),
            f"## {modality}: shards",
            _table(("shard", "samples", "sha256"), [(s["name"], s["samples"], s["sha256"][:16]) for s in man["shards"]]),
        ]
    parts += [
        "## Format",
        "One WebDataset sample per pair, `__key__` = pair_id, members `json`, `txt`, `win.<ext>`, `lose.<ext>`; "
        "each shard has a sidecar parquet with its rows, each folder a `manifest.json`. See vipo's docs/dataset_format.md.",
        "## Config",
        "```yaml\n" + yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False) + "```",
    ]
    return "\n\n".join(parts) + "\n"


def write_card(out_dir: Path, cfg: BuildConfig, manifests: dict[str, dict], selected: pa.Table) -> Path:
    path = Path(out_dir) / "card" / "README.md"
    write_bytes(path, render_card(cfg, manifests, selected).encode("utf-8"))
    return path
