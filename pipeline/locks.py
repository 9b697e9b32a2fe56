"""One process at a time per output folder (docs/reliability.md, "Concurrency").

An advisory `flock` on `<folder>/.vipo.lock`: the kernel drops it when the holder exits, however it
exits (SIGKILL included), so a lock left by a killed process is simply free and the next start takes
it over. The file keeps the holder's pid, host, command and start time so a refusal can name them.
On NFS, Linux maps `flock` to byte-range locks, which the server arbitrates across hosts.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from schemas.errors import VipoError

LOCK_NAME = ".vipo.lock"


class FolderLocked(VipoError, RuntimeError):
    """Another process holds the folder's lock: one line naming it."""


class FolderLock:
    """`with FolderLock(out, "build"):` — held for the block; refused at once if held elsewhere."""

    def __init__(self, folder: str | Path, command: str):
        self.folder = Path(folder)
        self.command = command
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    def acquire(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(fd)
            os.close(fd)
            raise FolderLocked(f"{self.folder}: in use by {holder}; wait for it to finish or stop it") from None
        except BaseException:
            os.close(fd)
            raise
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing drops the flock; the file stays (its content is only a hint)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _describe(fd: int) -> str:
    """'vipo build, pid 123 on host h since ...' from the lock file (a best effort: it is a hint)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"vipo {info['command']} (pid {info['pid']} on {info['host']}, since {info['since']})"
    except (ValueError, KeyError, TypeError, OSError):
        return "another vipo process"
