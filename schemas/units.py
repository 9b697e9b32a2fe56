"""Work unit descriptors: what the executor hands a worker instead of rows (docs/architecture.md, "Units").

A unit names *where* its input rows are (row ranges of parquet files) and the settings that shape
its batches, never the rows themselves: the driver's cost grows with the number of units, and a
worker reads its own rows with column projection. Unit ids come from the work alone, so a resumed
run plans the same units, skips the finished ones by id and feeds the models the same batches.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from schemas.ids import _digest, canonical_json


@dataclass(frozen=True)
class Slice:
    """Rows [start, stop) of one parquet file."""

    path: str
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Unit:
    """One piece of a stage's work.

    `key` is the setting every row of the unit shares (sampling params, modality, category): units
    never mix keys, so one model call never mixes them either. `params` carries small extra settings
    as canonical JSON (e.g. a shard's index), `rows` the expected input rows (progress bars).
    """

    id: str
    key: str = ""
    slices: tuple[Slice, ...] = ()
    rows: int = 0
    params: str = "{}"

    def param(self, name: str, default=None):
        return json.loads(self.params).get(name, default)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Unit:
        data = json.loads(text)
        data["slices"] = tuple(Slice(**s) for s in data["slices"])
        return cls(**data)


def unit_id(stage: str, *parts: object) -> str:
    """A unit's id: 16 hex of the stage name and everything that fixes the unit's content."""
    return _digest(stage, *(p if isinstance(p, str) else canonical_json(p) for p in parts))


def make_unit(stage: str, identity: tuple, *, key: str = "", slices: tuple[Slice, ...] = (), rows: int | None = None,
              **params: object) -> Unit:
    """A unit whose id is `unit_id(stage, *identity)`; `rows` defaults to the slices' total."""
    return Unit(
        id=unit_id(stage, *identity),
        key=key,
        slices=tuple(slices),
        rows=sum(s.rows for s in slices) if rows is None else rows,
        params=canonical_json(params),
    )


@dataclass
class UnitStats:
    """What one unit reports back: items in and out, drops and failures by reason, a few examples.

    Failures are items that could not be processed (a model error, unreadable media); drops are items
    a rule removed. Both are also rows of the stage's output with their reason.
    """

    n_in: int = 0
    n_out: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    MAX_EXAMPLES = 3  # kept per unit
    MAX_STAGE_EXAMPLES = 10  # kept when a stage's units are added up

    def to_json(self) -> str:
        return canonical_json(asdict(self))

    @classmethod
    def from_json(cls, text: str | None) -> UnitStats:
        return cls(**json.loads(text)) if text else cls()

    def add(self, other: UnitStats) -> None:
        self.n_in += other.n_in
        self.n_out += other.n_out
        for mine, theirs in ((self.dropped, other.dropped), (self.failed, other.failed)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v
        room = self.MAX_STAGE_EXAMPLES - len(self.examples)
        if room > 0:
            self.examples += other.examples[:room]

    @property
    def n_failed(self) -> int:
        return sum(self.failed.values())
