"""What a new user meets first: a non-editable install that finds its presets, and a terminal without
Ray's own log lines (they go to a log file)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
REPO = Path(__file__).resolve().parents[1]
ROOTS = ("pipeline", "schemas", "reward_models", "trainer")


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_every_package_folder_is_listed_for_setuptools():
    """`packages` is a list (configs/ ships renamed as vipo_configs): a new subpackage must be added there."""
    st = _pyproject()["tool"]["setuptools"]
    on_disk = {str(p.parent.relative_to(REPO)).replace(os.sep, ".") for root in ROOTS for p in (REPO / root).rglob("__init__.py")
               if "__pycache__" not in p.parts}
    listed = set(st["packages"])
    assert on_disk - listed == set(), f"pyproject.toml [tool.setuptools] packages misses {sorted(on_disk - listed)}"
    assert listed - on_disk == {"vipo_configs"}, f"pyproject.toml lists packages with no folder: {sorted(listed - on_disk - {'vipo_configs'})}"
    assert st["package-dir"] == {"vipo_configs": "configs"} and (REPO / "configs" / "__init__.py").is_file()
    assert st["package-data"] == {"vipo_configs": ["*.yaml"], "pipeline.study": ["static/*"]}


def test_gpu_extra_pins_the_set_the_suite_was_run_on():
    """vllm pins torch exactly; 0.33.0 is the newest that installs (benchmarks/gpu_resolve.sh)."""
    gpu = _pyproject()["project"]["optional-dependencies"]["gpu"]
    assert gpu == ["vllm==0.33.0", "bitsandbytes>=0.45,<0.51"]


@pytest.mark.timeout(600)
def test_a_wheel_install_finds_its_presets_outside_the_checkout(tmp_path):
    """`pip wheel .` -> fresh venv (system site-packages for the dependencies, --no-deps --no-index for vipo)
    -> `vipo --help` and the default config lookup, run from a folder that is not the checkout."""
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "vipo-demo*", "__pycache__", "build", "dist", "*.egg-info",
                                                             ".pytest_cache", ".ruff_cache", "audit-demo", "*.parquet"))
    run = lambda *cmd, **kw: subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    built = run(sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), cwd=src)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("vipo-*.whl")
    members = set(zipfile.ZipFile(wheel).namelist())
    sources = {str(p.relative_to(REPO)).replace(os.sep, "/") for root in ROOTS for p in (REPO / root).rglob("*.py") if "__pycache__" not in p.parts}
    presets = {f"vipo_configs/{p.name}" for p in (REPO / "configs").glob("*.yaml")}
    assert len(presets) >= 3 and "vipo_configs/demo.yaml" in presets
    assert sources | presets | {"cli.py"} <= members, f"the wheel misses {sorted((sources | presets | {'cli.py'}) - members)}"
    page = {f"pipeline/study/static/{p.name}" for p in (REPO / "pipeline" / "study" / "static").iterdir()}
    assert page and page <= members, f"the wheel misses the annotation page's {sorted(page - members)}"

    venv = tmp_path / "venv"
    assert run(sys.executable, "-m", "venv", "--system-site-packages", str(venv)).returncode == 0
    py = venv / "bin" / "python"
    installed = run(str(py), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel))
    assert installed.returncode == 0, installed.stderr[-2000:]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    helped = run(str(venv / "bin" / "vipo"), "--help", cwd=elsewhere, env=env)
    assert helped.returncode == 0 and "build" in helped.stdout, helped.stderr[-2000:]
    probe = textwrap.dedent("""
        import cli, schemas.config, schemas.audit
        print(cli.__file__); print(cli.DEMO_CONFIG); print(cli.preset("audit-demo.yaml"))
        print(schemas.config.load_config(cli.DEMO_CONFIG).name)
        print(len(schemas.audit.load_audit_config(cli.preset("audit-demo.yaml")).scorer_names))
    """)
    looked = run(str(py), "-c", probe, cwd=elsewhere, env=env)
    assert looked.returncode == 0, looked.stderr[-3000:]
    cli_file, demo, audit, name, n_scorers = looked.stdout.split("\n")[:5]
    site = next(Path(p) for p in venv.glob("lib/python*/site-packages"))
    assert Path(cli_file) == site / "cli.py"
    assert Path(demo) == site / "vipo_configs" / "demo.yaml" and Path(audit) == site / "vipo_configs" / "audit-demo.yaml"
    assert name == "vipo-demo" and n_scorers == "5"


ROUTE_SCRIPT = """
import logging, os, sys
from pipeline.ray_runtime import route_ray_logs
first, second = sys.argv[1], sys.argv[2]
route_ray_logs(first)
os.write(2, b"native line one\\n")                       # what Ray's C++ core worker does
logging.getLogger("ray").warning("ray line one")
logging.getLogger("ray.data._internal.x").warning("ray data line one")
logging.getLogger("ray.data").debug("ray data debug one")  # below INFO: not in the file
print("vipo line one", file=sys.stderr)
route_ray_logs(first)                                    # idempotent: no second handler, no duplicate lines
logging.getLogger("ray").warning("ray line again")
route_ray_logs(second)
os.write(2, b"native line two\\n")
logging.getLogger("ray").warning("ray line two")
print("vipo line two", file=sys.stderr)
"""


def test_route_ray_logs_keeps_the_terminal_for_vipo(tmp_path):
    """Both of Ray's channels (fd 2 and its Python loggers) go to the file; Python's sys.stderr stays."""
    script = tmp_path / "route.py"
    script.write_text(ROUTE_SCRIPT)
    first, second = tmp_path / "a" / "ray.log", tmp_path / "b" / "ray.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(script), str(first), str(second)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.splitlines() == ["vipo line one", "vipo line two"]
    one = first.read_text().splitlines()
    assert [ln.split(" -- ")[-1] for ln in one] == ["native line one", "ray line one", "ray data line one", "ray line again"]
    two = second.read_text().splitlines()
    assert [ln.split(" -- ")[-1] for ln in two] == ["native line two", "ray line two"]


RAY_DATA_SCRIPT = """
import sys
import ray
from pipeline.ray_runtime import init_ray
from schemas.config import RayConfig


class Double:
    def __call__(self, batch):
        return {"x": batch["x"] * 2}


init_ray(RayConfig(num_cpus=2), log_file=sys.argv[1])
ds = ray.data.from_items([{"x": i} for i in range(4)]).map_batches(
    Double, batch_size=2, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1)
print("vipo: sum", sum(r["x"] for r in ds.iter_rows()), file=sys.stderr)
ray.shutdown()
"""


@pytest.mark.timeout(300)
def test_a_ray_data_actor_pool_prints_nothing_of_rays_on_the_terminal(tmp_path):
    """Ray 2.60 prints, on every local start, a token-authentication WARNING and, per Ray Data actor pool, a
    core_worker.cc ERROR (Ray Data ray.puts the pool's constructor arguments and sets max_restarts=-1). With
    a log file both are there and the terminal has only the script's own line."""
    script = tmp_path / "pool.py"
    script.write_text(RAY_DATA_SCRIPT)
    log = tmp_path / "logs" / "ray.log"
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    env.update(PYTHONPATH=str(REPO), RAY_ADDRESS="local")  # a fresh local instance, never a stray cluster
    proc = subprocess.run([sys.executable, str(script), str(log)], capture_output=True, text=True, env=env, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.splitlines() == ["vipo: sum 12"], proc.stderr[-3000:]
    text = log.read_text()
    assert "Token authentication is enabled" in text
    assert "Started a local Ray instance" in text
    assert "core_worker.cc" in text and "has constructor arguments in the object store" in text
