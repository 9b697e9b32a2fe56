"""One process per output folder: a second is refused with the holder named; a killed holder's lock is free."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from pipeline.locks import LOCK_NAME, FolderLock, FolderLocked
from tests.conftest import REPO

HOLD = "import sys, time\nfrom pipeline.locks import FolderLock\nFolderLock(sys.argv[1], 'build').acquire()\nprint('held', flush=True)\ntime.sleep(600)\n"


def _holder(folder):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_process_is_refused_with_the_holder_named(tmp_path):
    proc = _holder(tmp_path / "out")
    try:
        with pytest.raises(FolderLocked) as err:
            FolderLock(tmp_path / "out", "audit").acquire()
        msg = str(err.value)
        assert msg.startswith(f"{tmp_path / 'out'}: in use by vipo build (pid {proc.pid} on {socket.gethostname()}, since ")
        assert msg.endswith("; wait for it to finish or stop it") and "\n" not in msg
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_holders_lock_is_taken_over(tmp_path):
    proc = _holder(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (tmp_path / LOCK_NAME).exists()  # the file stays; the kernel dropped the lock with the process
    with FolderLock(tmp_path, "build") as lock:
        assert f'"pid": {os.getpid()}' in lock.path.read_text()


def test_released_on_exit_and_reacquired(tmp_path):
    with FolderLock(tmp_path, "build"):
        pass
    start = time.monotonic()
    with FolderLock(tmp_path, "build"):
        assert time.monotonic() - start < 1


def test_lock_in_one_process_blocks_another_handle_too(tmp_path):
    """flock is per open file: a second FolderLock in the same process is refused as well (no silent re-entry)."""
    with FolderLock(tmp_path, "build"):
        with pytest.raises(FolderLocked):
            FolderLock(tmp_path, "build").acquire()


def test_audit_and_train_refuse_a_folder_in_use(tmp_path):
    """`audit` and `train` take the same lock as `build`: a held output folder is refused before any work."""
    import numpy as np

    from pipeline.audit.run import run_audit
    from pipeline.media import encode_image
    from schemas.audit import load_audit_config
    from schemas.train_config import parse_train_config
    from trainer.loop import train

    data = tmp_path / "in"
    data.mkdir()
    (data / "a.png").write_bytes(encode_image(np.zeros((8, 8, 3), np.uint8), "png"))
    (data / "pairs.jsonl").write_text('{"caption": "x", "image_0": "a.png", "image_1": "a.png", "label_0": 1}\n')
    for name, run in (
        ("audit", lambda out: run_audit(data / "pairs.jsonl", out, load_audit_config(None))),
        ("train", lambda out: train(parse_train_config(
            {"output_dir": str(out), "device": "cpu", "model": {"generator": "tiny-sd15"},
             "data": {"paths": [str(tmp_path / "none")]}, "max_steps": 1}, "test"), loader=[])),
    ):
        out = tmp_path / name
        with FolderLock(out, "build"):
            with pytest.raises(FolderLocked, match=rf"^{out}: in use by vipo build \(pid {os.getpid()} on "):
                run(out)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
