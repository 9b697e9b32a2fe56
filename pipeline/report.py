"""Progress and per-stage summaries: the library reports through this protocol, the CLI renders it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class StageSummary:
    """One stage's counts, made from its units' counters (drops and failures by reason)."""

    stage: str
    n_in: int = 0
    n_out: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    note: str = ""
    units: int = 0  # units of the stage's plan
    units_run: int = 0  # of which run now (the rest were done already)
    now: int = 0  # items processed now
    before: int = 0  # items done by an earlier run
    detail: str = ""  # the stage's own note (the `note` also says what was done now)

    def recount(self, verb: str) -> None:
        """Set `note` from the counts and the detail."""
        self.note = f"({self.now} {verb} now, {self.before} already there) {self.detail}".strip()

    def line(self) -> str:
        drops = ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items()) if v) or "none"
        text = f"{self.stage:<9} in {self.n_in:>6}  out {self.n_out:>6}  dropped: {drops}  ({self.seconds:.1f} s)"
        return f"{text}  {self.note}" if self.note else text


class Reporter(Protocol):
    def start(self, stage: str, total: int) -> None: ...

    def advance(self, n: int = 1) -> None: ...

    def finish(self, summary: StageSummary) -> None: ...


class NullReporter:
    def start(self, stage: str, total: int) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def finish(self, summary: StageSummary) -> None:
        pass
