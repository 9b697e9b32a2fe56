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
from pipeline.store import concat, dedupe_sorted, file_sha256, write_bytes
from schemas.tables import PROMPTS
from schemas.units import Unit, make_unit

PROBLEMS = "_problems.txt"  # in the prompts folder: one line `file:line: what is wrong` per bad row


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
        files = [(f, file_sha256(f)) for f in self.prompt_files]
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
        self.stats.extra = category_index(table)
        return table

    def finalize(self, records) -> str:
        text = self.problems_path.read_text() if self.problems_path.exists() else ""
        return f"bad rows listed in {self.problems_path}" if text else ""


def category_index(table: pa.Table) -> dict:
    """Row range [start, stop) and a fingerprint (of its prompt ids) of each category of a sorted table."""
    ranges, fingerprints = {}, {}
    if table.num_rows:
        runs = pc.run_end_encode(table["category"].combine_chunks())
        start = 0
        for cat, stop in zip(runs.values.to_pylist(), runs.run_ends.to_pylist()):
            ranges[cat] = [start, stop]
            ids = "\x1f".join(table["prompt_id"].slice(start, stop - start).to_pylist())
            fingerprints[cat] = hashlib.sha256(ids.encode()).hexdigest()[:16]
            start = stop
    return {"category_rows": ranges, "fingerprints": fingerprints}
