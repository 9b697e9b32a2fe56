"""The command line's one error boundary (docs/reliability.md, "Errors").

`describe(err)` sorts a failure that reached the top of a command into *expected* — a `VipoError`
or an operating-system error on a path (disk full, read-only, permission, a file where a folder
should be), also when Ray carries it back from a worker — phrased as one line, and *unexpected*
(a bug), which gets a short traceback on the terminal and the full one in a log file.
"""
from __future__ import annotations

import errno
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import MACHINE_HINTS, causes
from schemas.errors import VipoError

EXIT_EXPECTED = 2  # bad input, config, folder or resource: the user can fix it
EXIT_BUG = 3  # an unexpected exception: a traceback and a log file

_OS_HINTS = {
    **MACHINE_HINTS,
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of this path is a file, not a folder",
    errno.EEXIST: "exists and is not a folder",
    errno.EISDIR: "is a folder, expected a file",
    errno.ENOENT: "no such file or folder",
}


@dataclass(frozen=True)
class Failure:
    message: str  # one line
    expected: bool
    exit_code: int


def _one_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:2000]


def _os_message(err: OSError) -> str | None:
    if err.errno not in _OS_HINTS and not err.filename:
        return None
    what = _OS_HINTS.get(err.errno) or err.strerror or str(err)
    where = err.filename if err.filename is not None else "<output>"
    return f"{where}: {what}"


def describe(err: BaseException) -> Failure:
    """Expected failures as their one line; anything else as a bug."""
    for e in causes(err):
        if isinstance(e, VipoError):
            return Failure(_one_line(str(e)), True, EXIT_EXPECTED)
        if isinstance(e, OSError) and (msg := _os_message(e)):
            return Failure(msg, True, EXIT_EXPECTED)
    ray_line = _ray_failure(err)
    if ray_line:
        return Failure(ray_line, True, EXIT_EXPECTED)
    return Failure(_one_line(f"{type(err).__name__}: {err}"), False, EXIT_BUG)


def _ray_failure(err: BaseException) -> str | None:
    """Ray's own failures that are not a bug in vipo: a worker killed for memory, a lost node."""
    try:
        from ray import exceptions as rx
    except ImportError:  # pragma: no cover - ray is a dependency
        return None
    kinds = (rx.OutOfMemoryError, rx.NodeDiedError, rx.ObjectLostError, rx.RaySystemError, rx.GetTimeoutError)
    for e in causes(err):
        if isinstance(e, kinds):
            return f"ray: {type(e).__name__}: {_one_line(str(e))}"
    return None


def log_dir() -> Path:
    base = os.environ.get("VIPO_LOG_DIR") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vipo" / "logs"
    return Path(base)


def write_crash_log(err: BaseException, command: str) -> Path | None:
    """The full traceback in a log file; None when even that cannot be written."""
    path = log_dir() / f"{time.strftime('%Y%m%d-%H%M%S')}-{command}-{os.getpid()}.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(traceback.format_exception(err)))
    except OSError:
        return None
    return path


def short_traceback(err: BaseException, frames: int = 3) -> str:
    """The last few frames and the exception line: enough to file an issue, short enough to read."""
    summary = traceback.extract_tb(err.__traceback__)[-frames:]
    return "".join(traceback.format_list(summary)) + "".join(traceback.format_exception_only(err))
