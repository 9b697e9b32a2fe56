"""Faults and hostile input at the command line: one `error:` line, exit code 2, no traceback, nothing
written outside the output folder (docs/reliability.md)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, small_config, tars, write_config

CLI = [sys.executable, str(REPO / "cli.py")]


def run_cli(*args, env=None, timeout=300, cwd=None):
    proc = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=cwd)
    return proc


def error_line(proc) -> str:
    """The one `error:` line of a failed command; asserts there is no traceback and nothing else on stderr."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0].removeprefix("error: ")


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture
def sandbox(tmp_path):
    """A folder whose listing is checked after the test: only the output folder may grow."""
    return tmp_path


def test_build_config_not_utf8(sandbox):
    cfg = sandbox / "latin1.yaml"
    cfg.write_bytes(b"name: x\n# caf\xe9\n")
    before = listing(sandbox)
    assert error_line(run_cli("build", "--config", cfg, "--out", sandbox / "out")) == \
        f"{cfg}: line 2: not UTF-8 text (byte 0xe9 at offset 13)"
    assert listing(sandbox) == before


@pytest.mark.parametrize("command", ["audit", "train"])
def test_audit_and_train_config_not_utf8(sandbox, command):
    cfg = sandbox / "latin1.yaml"
    cfg.write_bytes(b"# caf\xe9\n")
    args = ["audit", sandbox / "data.jsonl", "--out", sandbox / "out"] if command == "audit" else ["train"]
    (sandbox / "data.jsonl").write_text("")
    before = listing(sandbox)
    assert error_line(run_cli(*args, "--config", cfg)) == f"{cfg}: line 1: not UTF-8 text (byte 0xe9 at offset 5)"
    assert listing(sandbox) == before


def test_config_path_is_a_folder(sandbox):
    assert error_line(run_cli("build", "--config", sandbox)) == f"{sandbox}: is a folder, expected a YAML file"
    assert listing(sandbox) == set()


def _cfg(sandbox, vipo_cache, out, mutate=None) -> Path:
    data = small_config(vipo_cache, out)
    if mutate:
        mutate(data)
    return write_config(sandbox / "cfg.yaml", data)


def test_output_dir_is_a_file(sandbox, vipo_cache):
    (sandbox / "taken").write_text("x")
    cfg = _cfg(sandbox, vipo_cache, sandbox / "taken")
    before = listing(sandbox)
    assert error_line(run_cli("build", "--config", cfg)) == f"{sandbox / 'taken'}: exists and is not a folder"
    assert listing(sandbox) == before


def test_output_dir_under_a_file(sandbox, vipo_cache):
    (sandbox / "taken").write_text("x")
    out = sandbox / "taken" / "build"
    cfg = _cfg(sandbox, vipo_cache, out)
    before = listing(sandbox)
    assert error_line(run_cli("build", "--config", cfg)) == f"{out}: a part of this path is a file, not a folder"
    assert listing(sandbox) == before


@pytest.fixture
def mount_point(tmp_path):
    """A tmpfs of our own (root in a container can mount one); skipped with the reason where it cannot."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted = []

    def mount(options: str) -> Path:
        cmd = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)]
        if mounted:
            cmd = ["mount", "-o", f"remount,{options}", str(mnt)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode})")
        mounted.append(True)
        return mnt

    yield mount
    if mounted:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_output_dir_read_only(sandbox, vipo_cache, mount_point):
    ro = mount_point("ro,size=1m")
    out = ro / "build"
    cfg = _cfg(sandbox, vipo_cache, out)
    assert error_line(run_cli("build", "--config", cfg)) == f"{out}: read-only file system"


def test_boolean_quota_is_refused(sandbox, vipo_cache):
    cfg = _cfg(sandbox, vipo_cache, sandbox / "out", lambda d: d["categories"]["aesthetics"].update(quota=True))
    assert error_line(run_cli("build", "--config", cfg)) == f"{cfg}: categories.aesthetics.quota: expected a number, got the boolean true"
    assert not (sandbox / "out").exists()


def test_alias_bomb_in_the_audit_options(sandbox):
    from schemas.config_io import MAX_EXPANDED_NODES

    cfg = sandbox / "bomb.yaml"
    lines = ["reward_models:", "  - name: pickscore", "    model: tiny", "    options:", "      l0: &l0 [a, a, a, a, a, a, a, a, a, a]"]
    lines += [f"      l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
    cfg.write_text("\n".join(lines) + "\n")
    (sandbox / "data.jsonl").write_text("")
    assert error_line(run_cli("audit", sandbox / "data.jsonl", "--out", sandbox / "out", "--config", cfg)) == \
        f"{cfg}: line 9: YAML aliases expand to more than {MAX_EXPANDED_NODES:,} values; write the values out"
    assert not (sandbox / "out").exists()


def test_negative_inference_steps(sandbox, vipo_cache):
    cfg = _cfg(sandbox, vipo_cache, sandbox / "out", lambda d: d["generators"][0]["sampling"][0].update(num_inference_steps=-4))
    assert error_line(run_cli("build", "--config", cfg)) == \
        f"{cfg}: generators.0.sampling.0.num_inference_steps: -4 is below the least meaningful value 1"
    assert not (sandbox / "out").exists()


@pytest.mark.parametrize("where", ["generator", "reward model", "audit"])
def test_model_path_that_does_not_exist(sandbox, vipo_cache, where):
    missing = sandbox / "no-such-model"
    if where == "audit":
        cfg = sandbox / "audit.yaml"
        cfg.write_text(yaml.safe_dump({"reward_models": [{"name": "pickscore", "model": "tiny"},
                                                         {"name": "hpsv21", "model": str(missing)}]}))
        (sandbox / "data.jsonl").write_text("")
        proc = run_cli("audit", sandbox / "data.jsonl", "--out", sandbox / "out", "--config", cfg)
        key = "reward_models.1.model"
    else:
        def mutate(d):
            if where == "generator":
                d["generators"][0]["model"] = str(missing)
            else:
                d["scoring"]["reward_models"][2]["model"] = str(missing)
        cfg = _cfg(sandbox, vipo_cache, sandbox / "out", mutate)
        proc = run_cli("build", "--config", cfg)
        key = "generators.0.model" if where == "generator" else "scoring.reward_models.2.model"
    assert error_line(proc) == f"{cfg}: {key}: {missing}: no such file or folder (a hub id looks like org/name)"
    assert not (sandbox / "out").exists()


def test_a_generator_folder_without_model_index(sandbox, vipo_cache):
    (sandbox / "weights").mkdir()
    cfg = _cfg(sandbox, vipo_cache, sandbox / "out", lambda d: d["generators"][0].update(model=str(sandbox / "weights")))
    assert error_line(run_cli("build", "--config", cfg)) == \
        f"{cfg}: generators.0.model: {sandbox / 'weights'}: not a generator folder (no model_index.json in it)"


def test_markup_in_an_error_is_printed_as_is(sandbox, vipo_cache):
    cfg = _cfg(sandbox, vipo_cache, sandbox / "out")
    line = error_line(run_cli("build", "--config", cfg, "--stages", "sc[ore],[bold]x[/]"))
    assert line == "--stages: unknown stage(s) sc[ore], [bold]x[/]; stages are prompts,generate,score,pair,judge,select,write"


@pytest.fixture
def ray_env(ray_session):
    return {"RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}


@pytest.mark.parametrize("stage", ["score", "judge"])
def test_gpus_asked_on_a_cpu_cluster_are_refused_before_any_stage(sandbox, vipo_cache, ray_env, stage):
    def mutate(d):
        if stage == "score":
            d["scoring"]["resources"]["num_gpus"] = 1
        else:
            d["judge"] = {"model": "tiny", "resources": {"num_gpus": 1}}
    out = sandbox / "out"
    cfg = _cfg(sandbox, vipo_cache, out, mutate)
    line = error_line(run_cli("build", "--config", cfg, env=ray_env))
    key = "scoring.resources" if stage == "score" else "judge.resources"
    assert line.startswith(f"stage {key!r} asks for 1 GPU per actor but the Ray cluster has 0"), line
    assert not (out / "media").exists() and not (out / "prompts").exists()  # nothing ran


def _prompt_file_build(sandbox, vipo_cache, name: str, data: bytes, ray_env):
    path = sandbox / name
    path.write_bytes(data)
    cfg = _cfg(sandbox, vipo_cache, sandbox / "out", lambda d: d.update(prompt_files=[str(path)]))
    return path, run_cli("build", "--config", cfg, "--stages", "prompts", env=ray_env)


def test_prompt_file_not_utf8(sandbox, vipo_cache, ray_env):
    path, proc = _prompt_file_build(sandbox, vipo_cache, "p.txt", b"aesthetics\ta cat\naesthetics\tcaf\xe9\n", ray_env)
    assert error_line(proc) == f"{path}: line 2: not UTF-8 text (byte 0xe9 at offset 31)"


def test_prompt_file_huge_csv_field(sandbox, vipo_cache, ray_env):
    data = b'category,prompt\naesthetics,"' + b"x" * 200_000 + b'"\n'
    path, proc = _prompt_file_build(sandbox, vipo_cache, "p.csv", data, ray_env)
    assert error_line(proc) == f"{path}: after line 1: field larger than field limit (131072)"


def test_prompt_file_without_header(sandbox, vipo_cache, ray_env):
    path, proc = _prompt_file_build(sandbox, vipo_cache, "p.csv", b"aesthetics,a cat\n", ray_env)
    assert error_line(proc) == f"{path}: the csv header ['aesthetics', 'a cat'] has no column 'prompt' or 'category'"


def test_prompt_file_deep_json_row_is_skipped_and_listed(sandbox, vipo_cache, ray_env):
    data = b'{"category": "aesthetics", "prompt": "a red fox"}\n' + b"[" * 100_000 + b"]" * 100_000 + b"\n"
    path, proc = _prompt_file_build(sandbox, vipo_cache, "p.jsonl", data, ray_env)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "dropped: bad_row 1" in proc.stderr
    assert (sandbox / "out" / "prompts" / "_problems.txt").read_text().splitlines() == [f"{path}:2: JSON nested too deeply"]


def test_two_builds_on_one_folder_the_second_is_refused_then_a_killed_holder_is_taken_over(sandbox, vipo_cache, ray_env):
    out = sandbox / "out"
    cfg = _cfg(sandbox, vipo_cache, out)
    first = subprocess.Popen([*CLI, "build", "--config", str(cfg)], env={**os.environ, **ray_env},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        lock = out / ".vipo.lock"
        deadline = time.time() + 120
        while time.time() < deadline and not (lock.exists() and lock.read_text().strip()):
            time.sleep(0.05)
        line = error_line(run_cli("build", "--config", cfg, "--stages", "prompts", env=ray_env))
        assert line.startswith(f"{out}: in use by vipo build (pid {first.pid} on {socket.gethostname()}, since "), line
        assert first.poll() is None
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    proc = run_cli("build", "--config", cfg, "--stages", "prompts", env=ray_env)
    assert proc.returncode == 0, proc.stderr  # the lock of the killed build is free


def test_a_bug_gets_a_short_traceback_and_a_log(tmp_path, monkeypatch, capsys):
    import cli

    monkeypatch.setenv("VIPO_LOG_DIR", str(tmp_path / "logs"))

    def deep(n):
        return 1 / 0 if n == 0 else deep(n - 1)

    try:
        deep(10)
    except ZeroDivisionError as err:
        code = cli._report(err)
    assert code == 3
    err_text = capsys.readouterr().err
    assert "error: ZeroDivisionError: division by zero" in err_text
    assert err_text.count('File "') == 3  # the last three frames only
    (log,) = (tmp_path / "logs").iterdir()
    assert f"the full traceback is in {log}" in err_text.replace("\n", "")
    full = log.read_text()  # every frame: the test's, deep()'s first, and Python's "repeated" line for the other ten
    assert full.count('File "') == 4 and "[Previous line repeated 8 more times]" in full and "ZeroDivisionError" in full


def test_disk_full_then_resume_gives_the_shards_of_an_uninterrupted_build(sandbox, vipo_cache, ray_env, mount_point, built):
    """Out of space mid-build: one line naming the folder; once there is space, the rerun resumes and ends
    with the same tars as a build that never ran out."""
    _, reference = built
    mnt = mount_point("size=600k")
    out = mnt / "build"
    cfg = _cfg(sandbox, vipo_cache, out)
    proc = run_cli("build", "--config", cfg, env=ray_env, timeout=900)
    line = error_line(proc)
    assert line.endswith(": no space left on the device; free some and rerun (finished work is kept)"), line
    assert line.startswith(str(out)), line
    assert not [p for p in out.rglob("*.tmp")]  # what is visible is whole: no temp file outlives the error
    mount_point("size=64m")
    proc = run_cli("build", "--config", cfg, env=ray_env, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert tars(out) == tars(reference.out_dir)


def test_a_build_larger_than_the_disk_is_refused_before_it_starts(sandbox, vipo_cache, mount_point):
    from pipeline.build import preflight
    from pipeline.space import _size, estimate_build_bytes
    from schemas.config import load_config

    mnt = mount_point("size=1m")
    out = mnt / "build"
    cfg = _cfg(sandbox, vipo_cache, out, lambda d: [s.update(height=2048, width=2048) for s in d["generators"][0]["sampling"]])
    need = estimate_build_bytes(c := load_config(cfg), preflight(c))
    assert need > 16 * 2**20  # 8 images of 2048 x 2048 at 0.5 B/px, before tables, video and shards
    line = error_line(run_cli("build", "--config", cfg))
    assert line == (f"{out}: the build needs about {_size(need)} of disk (media, tables, shards; estimated from the config), "
                    f"{_size(1024 * 1024)} are free; free some, choose another --out, or pass --skip-space-check")
    assert not out.exists()
