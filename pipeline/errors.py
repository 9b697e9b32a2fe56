"""One error policy for every model stage (docs/architecture.md, "Errors").

An item that fails (a model error on it alone, unreadable media, a rater that answers with neither
label) becomes a row of the stage's output with its reason, and the stage goes on. The stage stops
only when the share of failed items passes `failures.max_share` (after `failures.min_items`), with
one line naming the count and a few examples. This is webdataset's `handler=` idea with one handler.
"""
from __future__ import annotations

import errno
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from schemas.errors import VipoError
from schemas.units import UnitStats

# Reasons of failed items, stored per row (a stage's rules have their own drop reasons).
FAILED = "failed"  # the model raised on this item alone
CORRUPT_MEDIA = "corrupt_media"  # the item's media cannot be read or decoded
VLM_NO_LABEL = "vlm_no_label"  # neither label is among the rater's first-token log-probabilities

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class ItemFailure:
    """Why one item has no result."""

    item: str
    reason: str
    message: str

    @classmethod
    def of(cls, item: str, err: BaseException, reason: str = FAILED) -> ItemFailure:
        """The failure of this item alone; a fault of the machine is re-raised (`machine_fault`)."""
        if machine_fault(err):
            raise err
        return cls(item, reason, f"{type(err).__name__}: {err}"[:500])


# The disk is full, over quota or read-only: every next item would fail the same way, and recording
# them as failed rows would write to that same disk. The stage stops with the error; a rerun resumes.
MACHINE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


MACHINE_HINTS = {
    errno.ENOSPC: "no space left on the device; free some and rerun (finished work is kept)",
    errno.EDQUOT: "disk quota exceeded; free some and rerun (finished work is kept)",
    errno.EROFS: "read-only file system",
}


def machine_fault(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in MACHINE_ERRNOS


def causes(err: BaseException | None) -> Iterator[BaseException]:
    """The error, then what it wraps: Ray's `.cause` (a worker's exception) and Python's `__cause__`."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = getattr(err, "cause", None) or err.__cause__


class OutputFault(VipoError):
    """The output folder's disk is full, over quota or read-only: one line naming the folder."""


def output_fault(err: BaseException, folder: object) -> OutputFault | None:
    """An OutputFault naming `folder` (or the file) when a machine fault is among `err`'s causes."""
    fault = next((e for e in causes(err) if machine_fault(e)), None)
    if fault is None:
        return None
    return OutputFault(f"{fault.filename or folder}: {MACHINE_HINTS[fault.errno]}")


class StageFailed(VipoError, RuntimeError):
    """Too many items of a stage failed: the stage stops (finished units are kept)."""


@dataclass(frozen=True)
class ErrorPolicy:
    max_share: float = 0.1
    min_items: int = 50

    def check(self, stage: str, stats: UnitStats) -> None:
        """Raise StageFailed when the failed share of the items seen so far is past the bound."""
        seen, failed = stats.n_in, stats.n_failed
        if failed and seen >= self.min_items and failed / seen > self.max_share:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(stats.failed.items()))
            examples = "; ".join(stats.examples[:3])
            raise StageFailed(
                f"stage {stage!r}: {failed} of {seen} items failed ({reasons}), more than failures.max_share "
                f"{self.max_share:g}; e.g. {examples}"
            )


def batch_then_each(items: Sequence[T], run: Callable[[Sequence[T]], list[R]], name: Callable[[T], str]) -> list[R | ItemFailure]:
    """`run(items)`; if the batch raises, each item alone, so one bad item costs only itself.

    Returns one result or ItemFailure per item, in order.
    """
    if not items:
        return []
    try:
        out = run(items)
        if len(out) != len(items):
            raise RuntimeError(f"{len(out)} results for {len(items)} items")
        return list(out)
    except Exception as err:
        if len(items) == 1:
            return [ItemFailure.of(name(items[0]), err)]
    results: list[R | ItemFailure] = []
    for item in items:
        try:
            results.append(run([item])[0])
        except Exception as err:
            results.append(ItemFailure.of(name(item), err))
    return results
