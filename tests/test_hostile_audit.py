"""Hostile input to `cli.py audit` (issue 15, docs/reliability.md "Bad input: audit and verify").

Every input is built here, small on disk where the bomb is in the compression (zstd of zeros, a
deflate stream of zeros, sparse tar members), and run through the real command, `python cli.py audit`,
in a child process under `_WRAPPER`: a child subreaper that reaps every process the command starts
(Ray's included), so `getrusage(RUSAGE_CHILDREN).ru_maxrss` after it exits is the peak RSS of the
largest process of the whole tree, and that kills the tree past 3 GiB or its time limit (the
machine is shared: an unfixed reader must fail the test, not the machine).

Each test asserts the exact outcome (the one `error:` line and exit code 2 for a bad file; exit 0
and the skip reason and detail of each row for a bad row), that no traceback is printed, that
nothing is written outside the output folder (the input folder and the working folder are
unchanged), and, for the memory rows, that the peak RSS stays under 1 GiB, each memory case in its
own child. Rows that only an actor reads (an image's bytes) have their actor-side read measured in
a child too: a score actor holds torch and the models (about 1 GiB by itself), so its peak says
nothing about the input.
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.formats.bounded import MAX_CSV_FIELD, MAX_JSON_DEPTH, MAX_LINE_BYTES, MAX_ROW_GROUP_BYTES
from pipeline.formats.shards import SHARD_SUFFIXES
from pipeline.media import encode_image

REPO = Path(__file__).resolve().parents[1]
RSS_LIMIT_MB = 1024
MEMBERS = ", ".join(sorted(SHARD_SUFFIXES))

_WRAPPER = r'''
import ctypes, json, os, resource, signal, subprocess, sys, threading, time
out_path, kill_kb, timeout, cmd = sys.argv[1], int(sys.argv[2]) * 1024, float(sys.argv[3]), sys.argv[4:]
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans of the tree are re-parented to us
me, page_kb, t0, state = os.getpid(), os.sysconf("SC_PAGE_SIZE") // 1024, time.monotonic(), {"killed": None}

def tree():
    children, rss = {}, {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(name))
            rss[int(name)] = int(fields[21]) * page_kb
    out, todo = {}, [me]
    while todo:
        for pid in children.get(todo.pop(), []):
            out[pid] = rss[pid]
            todo.append(pid)
    return out

def kill_tree():
    for pid in tree():
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass

child = subprocess.Popen(cmd)

def watch():
    while child.poll() is None:
        sizes = tree()
        if sizes and max(sizes.values()) > kill_kb:
            state["killed"] = f"a process passed {kill_kb // 1024} MB"
            return kill_tree()
        if time.monotonic() - t0 > timeout:
            state["killed"] = f"still running after {timeout:.0f} s"
            return kill_tree()
        time.sleep(0.2)

threading.Thread(target=watch, daemon=True).start()
rc = child.wait()
grace = time.monotonic() + 60
while True:  # Ray's processes outlive the driver a moment: reap them here, so their peak counts too
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        break
    if pid == 0:
        if time.monotonic() > grace:
            kill_tree()
        time.sleep(0.1)
with open(out_path, "w") as f:
    json.dump({"rc": rc, "maxrss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
               "seconds": time.monotonic() - t0, "killed": state["killed"]}, f)
'''


@dataclass
class Run:
    rc: int
    out: str  # stdout and stderr
    maxrss_mb: float
    seconds: float
    killed: str | None
    stdout: str = ""

    @property
    def last_json(self):
        """The JSON a `python -c` child printed last on stdout."""
        return json.loads(self.stdout.strip().splitlines()[-1])

    @property
    def error_lines(self) -> list[str]:
        return [ln for ln in self.out.splitlines() if ln.startswith("error: ")]


def child_env(cache: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # never a stray cluster
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO))
    if cache is not None:
        env["VIPO_CACHE"] = str(cache)
    return env


def run_child(argv: list[str], work: Path, timeout: float = 300, cache: Path | None = None) -> Run:
    """`argv` (after the interpreter) in a child of its own wrapper, from the empty folder `work/cwd`."""
    harness, cwd = work / "harness", work / "cwd"
    harness.mkdir(parents=True, exist_ok=True)
    cwd.mkdir(parents=True, exist_ok=True)
    result = harness / f"run-{len(list(harness.iterdir()))}.json"
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, str(result), "3072", str(timeout), sys.executable, *argv],
                          cwd=cwd, env=child_env(cache), capture_output=True, text=True, timeout=timeout + 180)
    info = json.loads(result.read_text())
    return Run(info["rc"], proc.stdout + proc.stderr, info["maxrss_mb"], info["seconds"], info["killed"], proc.stdout)


def cli(work: Path, *args: str, timeout: float = 300, cache: Path | None = None) -> Run:
    return run_child([str(REPO / "cli.py"), *args], work, timeout, cache)


def snapshot(root: Path, skip: Path) -> dict[str, tuple]:
    """Every entry under `root` but `skip` and the harness: (size, mtime, kind), symlinks not followed."""
    out = {}
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = [d for d in dirs if here / d != skip and d != "harness"]
        for name in dirs + files:
            st = (here / name).lstat()
            out[str((here / name).relative_to(root))] = (st.st_size, st.st_mtime_ns, st.st_mode)
    return out


def audit(work: Path, data: Path, *extra: str, cache: Path | None = None, timeout: float = 300) -> tuple[Run, Path]:
    """`cli.py audit data --out work/out ...`, asserting that nothing but `work/out` changed under `work`."""
    out = work / "out"
    (work / "cwd").mkdir(exist_ok=True)
    before = snapshot(work, out)
    run = cli(work, "audit", str(data), "--out", str(out), *extra, cache=cache, timeout=timeout)
    assert run.killed is None, f"{run.killed}\n{run.out[-3000:]}"
    assert "Traceback" not in run.out, run.out[-3000:]
    assert snapshot(work, out) == before, "the audit wrote outside its output folder"
    assert not list((work / "cwd").iterdir()), "the audit wrote into its working folder"
    return run, out


def assert_refused(run: Run, line: str) -> None:
    """A bad file: exit 2 and exactly one `error:` line, this one."""
    assert (run.rc, run.error_lines) == (2, [f"error: {line}"]), run.out[-3000:]


def scores(out: Path) -> dict[int, tuple[str, str | None]]:
    """row -> (status, detail) of the audit's score table."""
    table = pq.read_table(next((out / "scores").iterdir()))
    return {r["row"]: (r["status"], r["detail"]) for r in table.select(["row", "status", "detail"]).to_pylist()}


def _png(seed: int, size: int = 32) -> bytes:
    return encode_image(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8), "png")


def audit_config(work: Path, cache: Path, models: list[dict] | None = None) -> Path:
    path = work / "audit.yaml"
    path.write_text(yaml.safe_dump({
        "reward_models": models or [{"name": "aesthetic", "model": "tiny"}, {"name": "clipscore", "model": "tiny"}],
        "resources": {"num_gpus": 0, "num_cpus": 1, "num_actors": 1, "batch_size": 4},
        "examples": 12, "cache_dir": str(cache), "ray": {"address": "local"},
    }))
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# -- a zstd-compressed parquet whose pages decompress to gigabytes -----------------------------------------
_PARQUET_BOMB = r'''
import sys, numpy as np, pyarrow as pa, pyarrow.parquet as pq
n, size = 9, 64 << 20  # 9 rows of 64 MiB of zeros in each image column: 1.13 GiB decompressed, 40 KB on disk
data = np.zeros(n * size, np.uint8)  # calloc'd: untouched pages cost no memory
col = pa.LargeBinaryArray.from_buffers(pa.large_binary(), n, [None, pa.py_buffer(np.arange(n + 1, dtype=np.int64) * size),
                                                              pa.py_buffer(data)])
table = pa.table({"caption": ["a cat"] * n, "jpg_0": col, "jpg_1": col, "label_0": np.ones(n)})
pq.write_table(table, sys.argv[1], compression="zstd", compression_level=1, use_dictionary=False,
               write_statistics=False, row_group_size=n)
'''


def test_a_parquet_bomb_is_refused_from_its_footer(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    bomb = data / "train-0.parquet"
    subprocess.run([sys.executable, "-c", _PARQUET_BOMB, str(bomb)], check=True, timeout=600)
    group = pq.ParquetFile(bomb).metadata.row_group(0)
    jpg_0 = group.column(1).total_uncompressed_size
    assert bomb.stat().st_size < 1 << 20 and group.total_byte_size > MAX_ROW_GROUP_BYTES  # the bomb is real
    run, out = audit(tmp_path, data)
    assert_refused(run, f"{bomb}: row group 0 decompresses to {group.total_byte_size} bytes (jpg_0: {jpg_0}), "
                        f"over the {MAX_ROW_GROUP_BYTES}-byte limit (parquet footer); nothing of it was read")
    assert run.maxrss_mb < RSS_LIMIT_MB, run.maxrss_mb
    assert not out.exists()


# -- image paths: /dev/zero, a FIFO, outside the folder, symlinks out ---------------------------------------
def _pairs_folder(work: Path) -> Path:
    data = work / "data"
    (data / "img").mkdir(parents=True)
    for i in range(3):
        (data / "img" / f"{i}.png").write_bytes(_png(i))
    (work / "outside.png").write_bytes(_png(99))
    return data


def test_dev_zero_as_an_image_path_is_refused_unread(tmp_path):
    data = _pairs_folder(tmp_path)
    pairs = write_jsonl(data / "pairs.jsonl", [{"prompt": "zeros", "image_0": "/dev/zero", "image_1": "img/0.png", "label_0": 1}])
    run, out = audit(tmp_path, pairs)
    assert run.rc == 0 and run.maxrss_mb < RSS_LIMIT_MB, (run.rc, run.maxrss_mb, run.out[-2000:])
    assert scores(out) == {0: ("corrupt_image", f"image 0: /dev/zero: resolves to /dev/zero, outside the data folder {data} "
                                                "(allow with --allow-outside-paths)")}


_LIBRARY_DEV_ZERO = r'''
import json, resource, sys
from pipeline.audit.run import run_audit
from pipeline.audit.read import iter_unit
from schemas.audit import parse_audit_config
pairs, out = sys.argv[1], sys.argv[2]
result = run_audit(pairs, out, parse_audit_config({"reward_models": [{"name": "aesthetic"}, {"name": "clipscore"}]}), allow_outside=True)
# the actor's own read, for a row the planner did not refuse (the path became a device after planning)
unit = {"kind": "pairs", "root": sys.argv[3], "allow_outside": True,
        "rows": [{"row": 0, "caption": "z", "path_0": "/dev/zero", "path_1": "img/0.png", "label_0": 1}]}
row = next(iter_unit(unit, 4))[0]
print(json.dumps({"skipped": result.summary["skipped"], "actor": [row["error_reason"], row["error"], row["img_0"]],
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def test_dev_zero_with_outside_paths_allowed_is_not_a_regular_file(tmp_path):
    data = _pairs_folder(tmp_path)
    pairs = write_jsonl(data / "pairs.jsonl", [{"prompt": "zeros", "image_0": "/dev/zero", "image_1": "img/0.png", "label_0": 1}])
    run = run_child(["-c", _LIBRARY_DEV_ZERO, str(pairs), str(tmp_path / "out"), str(data)], tmp_path, timeout=300)
    assert (run.rc, run.killed) == (0, None), run.out[-3000:]
    got = run.last_json
    assert got["skipped"]["corrupt_image"] == 1
    assert scores(tmp_path / "out") == {0: ("corrupt_image", "image 0: /dev/zero: not a regular file (a character device)")}
    assert got["actor"] == ["corrupt_image", "image 0: /dev/zero: not a regular file (a character device)", None]
    assert run.maxrss_mb < RSS_LIMIT_MB and got["maxrss_mb"] < RSS_LIMIT_MB


_ACTOR_FIFO = r'''
import json, sys
from pipeline.audit.read import iter_unit
unit = {"kind": "pairs", "root": sys.argv[1], "rows": [{"row": 0, "caption": "f", "path_0": "fifo", "path_1": "img/0.png", "label_0": 0}]}
row = next(iter_unit(unit, 4))[0]
print(json.dumps([row["error_reason"], row["error"]]))
'''


def test_a_fifo_as_an_image_path_does_not_hang(tmp_path):
    data = _pairs_folder(tmp_path)
    os.mkfifo(data / "fifo")
    pairs = write_jsonl(data / "pairs.jsonl", [{"prompt": "pipe", "image_0": "fifo", "image_1": "img/0.png", "label_0": 0}])
    run, out = audit(tmp_path, pairs, timeout=120)
    assert run.rc == 0, run.out[-2000:]
    assert scores(out) == {0: ("corrupt_image", "image 0: fifo: not a regular file (a FIFO)")}
    actor = run_child(["-c", _ACTOR_FIFO, str(data)], tmp_path, timeout=60)  # no writer ever comes: open() would block
    assert (actor.rc, actor.killed) == (0, None), actor.out[-2000:]
    assert actor.last_json == ["corrupt_image", "image 0: fifo: not a regular file (a FIFO)"]


def test_a_fifo_as_an_input_file_is_refused(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    os.mkfifo(data / "train-0.parquet")
    run, _ = audit(tmp_path, data, timeout=120)
    assert_refused(run, f"{data / 'train-0.parquet'}: not a regular file (a FIFO)")


def _outside_rows(data: Path, work: Path) -> list:
    (data / "img" / "link.png").symlink_to(work / "outside.png")
    (data / "img" / "passwd.png").symlink_to("/etc/passwd")
    return [
        {"prompt": "up", "image_0": "../outside.png", "image_1": "img/0.png", "label_0": 1},
        {"prompt": "abs", "image_0": "img/1.png", "image_1": "/etc/passwd", "label_0": 0},
        {"prompt": "link", "image_0": "img/link.png", "image_1": "img/1.png", "label_0": 1},
        {"prompt": "link2", "image_0": "img/2.png", "image_1": "img/passwd.png", "label_0": 0},
        {"prompt": "yes", "image_0": "img/0.png", "image_1": "img/1.png", "label_0": True},
        {"prompt": {"text": "an object"}, "image_0": "img/0.png", "image_1": "img/1.png", "label_0": 1},
    ]


def _outside_expected(data: Path, work: Path) -> dict[int, tuple[str, str]]:
    def out(i: int, value: str, real: Path) -> str:
        return f"image {i}: {value}: resolves to {real}, outside the data folder {data} (allow with --allow-outside-paths)"

    return {
        0: ("corrupt_image", out(0, "../outside.png", work / "outside.png")),
        1: ("corrupt_image", out(1, "/etc/passwd", Path("/etc/passwd"))),
        2: ("corrupt_image", out(0, "img/link.png", work / "outside.png")),
        3: ("corrupt_image", out(1, "img/passwd.png", Path("/etc/passwd"))),
        4: ("bad_label", "label_0 = True is not a number"),
        5: ("missing_field", "caption is a JSON object, not text"),
    }


def test_paths_out_of_the_folder_labels_and_prompts_are_skipped_unread(tmp_path):
    from pipeline.audit.report import thumbnail_uri

    data = _pairs_folder(tmp_path)
    pairs = write_jsonl(data / "pairs.jsonl", _outside_rows(data, tmp_path))
    run, out = audit(tmp_path, pairs)
    assert run.rc == 0 and run.maxrss_mb < RSS_LIMIT_MB, run.out[-2000:]
    assert scores(out) == _outside_expected(data, tmp_path)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["pairs_read"], summary["pairs_scored"], summary["skipped"]["corrupt_image"]) == (6, 0, 4)
    assert thumbnail_uri((tmp_path / "outside.png").read_bytes(), 192, 64_000_000) not in (out / "report.html").read_text()
    # the export holds the file's own columns, the object prompt as its JSON text (it crashed with ArrowTypeError)
    assert pq.read_schema(out / "conflicting.parquet").field("prompt").type == pa.string()


# -- text of a pair file: depth, encoding, line and field caps; empty inputs --------------------------------
@pytest.mark.parametrize("case", ["deep", "just_too_deep", "not_utf8", "long_line", "csv_field", "empty_jsonl", "empty_parquet"])
def test_a_bad_pair_file_or_an_empty_input_is_one_line(tmp_path, case):
    data = tmp_path / "data"
    data.mkdir()
    ok = json.dumps({"prompt": "a", "image_0": "0.png", "image_1": "1.png", "label_0": 1})
    path = data / ("pairs.csv" if case == "csv_field" else "train-0.parquet" if case == "empty_parquet" else "pairs.jsonl")
    if case == "deep":
        path.write_text(ok + "\n" + "[" * 100_000 + "]" * 100_000 + "\n")
        line = f"{path}: line 2: JSON nested deeper than {MAX_JSON_DEPTH} levels"
    elif case == "just_too_deep":
        path.write_text(ok + "\n" + '{"prompt": ' + "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH + "}\n")
        line = f"{path}: line 2: JSON nested deeper than {MAX_JSON_DEPTH} levels"
    elif case == "not_utf8":
        path.write_bytes((ok + "\n" + ok + "\n").encode() + b'{"prompt": "caf\xe9"}\n')
        line = f"{path}: line 3: not UTF-8 (byte 0xe9 at column 16)"
    elif case == "long_line":
        path.write_text(json.dumps({"prompt": "x" * MAX_LINE_BYTES}) + "\n")
        line = f"{path}: line 1: longer than {MAX_LINE_BYTES} bytes"
    elif case == "csv_field":
        path.write_text(f"prompt,image_0,image_1,label_0\n\"{'x' * (MAX_CSV_FIELD + 1)}\",0.png,1.png,1\n")
        line = f"{path}: line 2: a field is longer than {MAX_CSV_FIELD} characters (the csv module's limit)"
    elif case == "empty_jsonl":
        path.write_text("")
        line = f"{path}: no rows to audit (1 input file(s), all empty)"
    else:
        from pipeline.audit.sample import write_sample

        pq.write_table(pq.read_table(write_sample(tmp_path / "two.parquet", rows=2, planted=False)).slice(0, 0), path)
        line = f"{path}: no rows to audit (1 input file(s), all empty)"
    run, out = audit(tmp_path, path)
    assert_refused(run, line)
    assert not out.exists()


# -- shard folders: `../` names, a .pickle member, ten 100 MB win.* members, a 2 GiB extra member ------------
def sparse_tar(path: Path, members: list[tuple[str, bytes | int]]) -> Path:
    """A plain tar whose int members are holes of that many bytes: gigabytes in the header, nothing on disk."""
    with open(path, "wb") as f:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = payload if isinstance(payload, int) else len(payload)
            info.mtime, info.mode = 0, 0o444
            f.write(info.tobuf(format=tarfile.USTAR_FORMAT))
            padded = -(-info.size // 512) * 512
            if isinstance(payload, int):
                f.seek(padded, os.SEEK_CUR)
            else:
                f.write(payload + b"\0" * (padded - len(payload)))
        f.write(b"\0" * 1024)
        f.truncate()
    return path


def shard_folder(root: Path, extra: dict[str, list[tuple[str, bytes | int]]], keys: int = 3) -> tuple[Path, list[str]]:
    """A shard folder (tar + sidecar) of `keys` sound samples; `extra[key]` members go after that sample's own."""
    folder = root / "shards" / "image"
    folder.mkdir(parents=True)
    names = [f"{i:016x}" for i in range(keys)]
    members: list[tuple[str, bytes | int]] = []
    for i, key in enumerate(names):
        own = {"json": json.dumps({"pair_id": key}).encode(), "txt": f"prompt {i}".encode(),
               "win.png": _png(i), "lose.png": _png(i + 10)}
        members += [(f"{key}.{suffix}", own[suffix]) for suffix in sorted(own)] + extra.get(key, [])
    sparse_tar(folder / "train-000000.tar", members)
    pq.write_table(pa.table({"pair_id": names, "prompt": [f"prompt {i}" for i in range(keys)],
                             "winner_generator": ["a"] * keys, "loser_generator": ["b"] * keys}), folder / "train-000000.parquet")
    return folder / "train-000000.tar", names


@pytest.mark.parametrize("case", ["dotdot", "absolute", "pickle"])
def test_a_shard_with_a_traversal_or_pickle_member_is_refused_every_run(tmp_path, case):
    import pickle

    root = tmp_path / "build"
    key = f"{1:016x}"
    member = {"dotdot": f"../{key}.json", "absolute": f"/tmp/{key}.json", "pickle": f"{key}.pickle"}[case]
    tar, _ = shard_folder(root, {key: [(member, pickle.dumps({"a": 1}))]})
    if case == "pickle":
        line = f"{tar}: sample {key!r}: member {member!r} is not part of the shard format (its members are {MEMBERS}); " \
               "the shard is refused, nothing of it read"
    else:
        line = f"{tar}: not a readable shard (member {member!r} is not a relative name inside the shard)"
    for _ in range(2 if case != "absolute" else 1):  # it failed with a traceback on the first run only
        run, out = audit(tmp_path, root)
        assert_refused(run, line)
        assert not out.exists()


@pytest.mark.parametrize("case", ["ten_wins", "two_gib"])
def test_huge_members_are_refused_from_their_headers(tmp_path, case):
    root = tmp_path / "build"
    key = f"{1:016x}"
    extra = [(f"{key}.win.{i}.png", 100 << 20) for i in range(10)] if case == "ten_wins" else [(f"{key}.extra.bin", 2 << 30)]
    tar, _ = shard_folder(root, {key: extra})
    assert tar.stat().st_blocks * 512 < 1 << 20 < tar.stat().st_size  # sparse: gigabytes claimed, nothing stored
    run, out = audit(tmp_path, root)
    assert_refused(run, f"{tar}: sample {key!r}: member {extra[0][0]!r} is not part of the shard format "
                        f"(its members are {MEMBERS}); the shard is refused, nothing of it read")
    assert run.maxrss_mb < RSS_LIMIT_MB, run.maxrss_mb
    # the actor checks the names again as it streams (the tar may change after planning), reading none of them
    actor = run_child(["-c", _ACTOR_SHARD, str(tar), str(tar.with_suffix(".parquet"))], tmp_path, timeout=300)
    assert (actor.rc, actor.killed) == (0, None), actor.out[-2000:]
    assert actor.last_json == ["ShardError", f"sample {key!r}: member {extra[0][0]!r} is not "
                                                              f"part of the shard format (its members are {MEMBERS})"]
    assert actor.maxrss_mb < RSS_LIMIT_MB, actor.maxrss_mb


_ACTOR_SHARD = r'''
import json, sys
from pipeline.audit.read import iter_unit
unit = {"kind": "shards", "tar": sys.argv[1], "path": sys.argv[2], "row_group": 0, "rg_offset": 0, "start": 0, "stop": 3}
try:
    rows = [r for batch in iter_unit(unit, 4) for r in batch]
    print(json.dumps(["no error", len(rows)]))
except Exception as err:
    print(json.dumps([type(err).__name__, str(err)]))
'''


# -- an ICO that says 16x16 and holds a 12000² PNG -----------------------------------------------------------
def png_bomb(width: int, height: int) -> bytes:
    """An RGBA PNG of zeros, deflated row by row: `width x height x 4` bytes decoded, a few hundred KB here."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    z, row, parts = zlib.compressobj(9), b"\0" * (1 + 4 * width), []
    parts += [z.compress(row) for _ in range(height)]
    idat = b"".join(parts) + z.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def ico_holding(png: bytes) -> bytes:
    """An ICO directory of one entry that says 16x16, 32 bpp, and points at `png`."""
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(png), 22) + png


_ICO_DECODE = r'''
import json, resource, sys, time
from PIL import Image
from pipeline.audit.stage import decode_pair
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
data = open(sys.argv[1], "rb").read()
before, t = rss(), time.perf_counter()
status = decode_pair({"img_0": data, "img_1": data}, 64_000_000)[:2]
ours = [status, rss() - before, time.perf_counter() - t]
im = Image.open(sys.argv[1])  # what the audit did before: every PIL plugin, ICO's decoding the PNG inside while opening
print(json.dumps({"ours": ours, "unrestricted": [im.format, list(im.size), rss() - before]}))
'''


def test_an_ico_holding_a_huge_png_is_refused_unopened(vipo_cache, tmp_path):
    from pipeline.audit.report import thumbnail_uri

    data = _pairs_folder(tmp_path)
    (data / "img" / "icon.png").write_bytes(ico_holding(png_bomb(12000, 12000)))
    assert (data / "img" / "icon.png").stat().st_size < 1 << 20
    rows = [{"prompt": "icon", "image_0": "img/icon.png", "image_1": "img/0.png", "label_0": 1},
            {"prompt": "good one", "image_0": "img/0.png", "image_1": "img/1.png", "label_0": 1},
            {"prompt": "good two", "image_0": "img/1.png", "image_1": "img/2.png", "label_0": 0},
            {"prompt": "good three", "image_0": "img/2.png", "image_1": "img/0.png", "label_0": 1},
            *_outside_rows(data, tmp_path)]
    pairs = write_jsonl(data / "pairs.jsonl", rows)
    run, out = audit(tmp_path, pairs, "--config", str(audit_config(tmp_path, vipo_cache)), cache=vipo_cache, timeout=900)
    assert run.rc == 0, run.out[-3000:]
    got = scores(out)
    assert got[0] == ("corrupt_image", "image 0: not a JPEG, PNG or WEBP image")
    assert [got[i][0] for i in (1, 2, 3)] == ["scored"] * 3
    assert {i + 4: v for i, v in _outside_expected(data, tmp_path).items()} == {i: got[i] for i in range(4, 10)}
    exported = pq.read_table(out / "consistent.parquet").to_pylist() + pq.read_table(out / "conflicting.parquet").to_pylist()
    assert sorted(r["prompt"] for r in exported) == ["good one", "good three", "good two"]
    html = (out / "report.html").read_text()
    assert thumbnail_uri((tmp_path / "outside.png").read_bytes(), 192, 64_000_000) not in html
    # the decode an actor runs on that row, in a child of its own: refused in milliseconds, nothing allocated
    child = run_child(["-c", _ICO_DECODE, str(data / "img" / "icon.png")], tmp_path, timeout=300)
    assert (child.rc, child.killed) == (0, None), child.out[-2000:]
    result = child.last_json
    (status, grew_mb, seconds), unrestricted = result["ours"], result["unrestricted"]
    assert status == ["corrupt_image", "image 0: not a JPEG, PNG or WEBP image"] and grew_mb < 16 and seconds < 1.0
    assert unrestricted[:2] == ["ICO", [12000, 12000]] and unrestricted[2] > 500  # the input is a real bomb


# -- a reward model path that does not exist ----------------------------------------------------------------
def test_a_missing_model_path_is_one_line_before_ray(tmp_path):
    """The preflight of `pipeline.model_sources` (the CLI's, and run_audit's for library callers)."""
    from pipeline.audit.run import model_specs
    from pipeline.audit.sample import write_sample
    from schemas.audit import load_audit_config
    from schemas.errors import VipoError

    data = write_sample(tmp_path / "data" / "train-0.parquet", rows=4, planted=False)
    cfg = audit_config(tmp_path, tmp_path / "no-cache", [{"name": "pickscore", "model": "/nope/pickscore"},
                                                         {"name": "aesthetic", "model": "./nope/aesthetic"}])
    run, out = audit(tmp_path, data, "--config", str(cfg))
    assert run.rc == 2 and len(run.error_lines) == 1, run.out[-3000:]
    assert run.error_lines[0].startswith(f"error: {cfg}: reward_models.0.model: /nope/pickscore: no such file or folder")
    assert not out.exists()
    with pytest.raises(VipoError, match=r"^audit config: reward_models\.0\.model: /nope/pickscore: no such file or folder"):
        model_specs(load_audit_config(cfg))


_ACTOR_SETUP = r'''
import json
from pipeline.audit.stage import AuditScoreStage
from schemas.config import ResourceConfig
stage = AuditScoreStage(resources=ResourceConfig(num_cpus=1, num_actors=1, batch_size=2),
                        models=[("aesthetic", "nobody/no-such-model", "float32", {})])
try:
    stage.setup()
except RuntimeError as err:
    print(json.dumps(str(err)))
'''


def test_a_model_that_does_not_load_on_the_actor_is_one_line(tmp_path):
    """A hub id passes the driver's check; the actor's load fails (offline), as the one marked line the
    driver finds in Ray's error (`run._one_line`)."""
    from pipeline.audit.run import _one_line
    from pipeline.audit.stage import MODEL_ERROR

    child = run_child(["-c", _ACTOR_SETUP], tmp_path, timeout=300)
    message = child.last_json
    assert message.startswith(f"{MODEL_ERROR}nobody/no-such-model: reward_models.0 (aesthetic) does not load (")
    assert "\n" not in message
    wrapped = RuntimeError(f"ray.exceptions.ActorDiedError: ...\n  File x, line 1\nRuntimeError: {message}\n")
    assert _one_line(wrapped) == message.removeprefix(MODEL_ERROR)
