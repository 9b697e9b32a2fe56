"""Build reporters for the benchmarks (the `pipeline.build.Reporter` protocol): no rich display."""
from __future__ import annotations

import sys
import time


class FirstUnit:
    """A Reporter that notes when the first unit finished (seconds after `start`)."""

    def __init__(self):
        self.t0, self.first = None, None

    def start(self, stage: str, total: int) -> None:
        self.t0 = time.perf_counter()

    def advance(self, n: int = 1) -> None:
        if n and self.first is None and self.t0 is not None:
            self.first = time.perf_counter() - self.t0

    def finish(self, summary) -> None:
        pass


class ProgressReporter:
    """The build's Reporter: a progress line on stderr every `every` s (long runs can be followed in a log)."""

    def __init__(self, every: float = 30.0):
        self.every, self.stage, self.total, self.done, self.t0, self.last = every, "", 0, 0, 0.0, 0.0

    def start(self, stage: str, total: int) -> None:
        self.stage, self.total, self.done = stage, total, 0
        self.t0 = self.last = time.perf_counter()

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            print(f"  [{time.strftime('%H:%M:%S')}] {self.stage}: {self.done:,}/{self.total:,} rows, "
                  f"{rate:,.0f}/s, ~{eta:,.0f} s to go", file=sys.stderr, flush=True)

    def finish(self, summary) -> None:
        print(f"  [{time.strftime('%H:%M:%S')}] {summary.line()}", file=sys.stderr, flush=True)
