"""The prompts stage: the library's prompts per category plus the user's prompt files, as one table
sorted by (category, prompt_id), with each category's row range and fingerprint in the unit's record,
so the generate stage plans its units from metadata alone."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.catalogue import Table
from pipeline.prompts import capacity, library_prompts, load_prompt_files
from pipeline.stage import TaskStage
from pipeline.store import concat, dedupe_sorted, write_bytes
from schemas.tables import PROMPTS
from schemas.units import Unit, make_unit

PROBLEMS = "_problems.txt"  # in the prompts folder: one line `file:line: what is wrong` per bad row


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class PromptsStage(TaskStage):
    counts: dict[str, int] = field(default_factory=dict)  # prompts drawn from the library per category
    seed: int = 0
    prompt_files: tuple[str, ...] = ()
    prompts: Table | None = None

    name: ClassVar[str] = "prompts"
    verb: ClassVar[str] = "drawn"

    def outputs(self) -> tuple[Table, ...]:
        return (self.prompts,)

    @property
    def problems_path(self) -> Path:
        return Path(self.prompts.folder) / PROBLEMS

    def plan(self) -> list[Unit]:
        files = [(f, _file_digest(f)) for f in self.prompt_files]
        return [make_unit("prompts", (sorted(self.counts.items()), self.seed, files), rows=sum(self.counts.values()))]

    def process(self, unit: Unit) -> pa.Table:
        counts = {c: min(n, capacity(c)) for c, n in self.counts.items()}
        tables = [library_prompts(counts, self.seed)]
        problems: list[str] = []
        if self.prompt_files:
            loaded = load_prompt_files(list(self.prompt_files), categories=list(self.counts))
            tables.append(loaded.table)
            problems = loaded.problems
        table = dedupe_sorted(concat(tables, PROMPTS), "prompt_id")
        table = table.take(pc.sort_indices(table, [("category", "ascending"), ("prompt_id", "ascending")]))
        write_bytes(self.problems_path, "".join(f"{p}\n" for p in problems).encode())
        self.count(n_in=sum(t.num_rows for t in tables) + len(problems), n_out=table.num_rows)
        self.drop("bad_row", len(problems))
        self.stats.extra = _category_index(table)
        return table

    def finalize(self, records) -> str:
        text = self.problems_path.read_text() if self.problems_path.exists() else ""
        return f"bad rows listed in {self.problems_path}" if text else ""


def _category_index(table: pa.Table) -> dict:
    """Row range [start, stop) and a fingerprint (of its prompt ids) of each category of a sorted table."""
    cats = table["category"].to_pylist()
    ranges, fingerprints, start = {}, {}, 0
    ids = table["prompt_id"]
    for i in range(1, len(cats) + 1):
        if i == len(cats) or cats[i] != cats[start]:
            ranges[cats[start]] = [start, i]
            joined = "\x1f".join(ids.slice(start, i - start).to_pylist())
            fingerprints[cats[start]] = hashlib.sha256(joined.encode()).hexdigest()[:16]
            start = i
    return {"category_rows": ranges, "fingerprints": fingerprints}
