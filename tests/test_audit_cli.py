"""`cli.py audit` refuses bad input with one line naming the file, before any Ray or model work."""
from __future__ import annotations

from typer.testing import CliRunner

from cli import app


def _run(*args: str):
    result = CliRunner().invoke(app, ["audit", *args])
    return result.exit_code, (result.output + (result.stderr if result.stderr_bytes is not None else "")).replace("\n", " ")


def test_missing_input(tmp_path):
    code, out = _run(str(tmp_path / "nope.parquet"), "--out", str(tmp_path / "o"))
    assert code == 2 and "nope.parquet: no such file or folder" in out


def test_bad_config(tmp_path):
    cfg = tmp_path / "audit.yaml"
    cfg.write_text("max_pixels: -3\n")
    code, out = _run(str(tmp_path), "--out", str(tmp_path / "o"), "--config", str(cfg))
    assert code == 2 and "audit.yaml: max_pixels: Input should be greater than or equal to 1" in out


def test_unreadable_parquet(tmp_path):
    (tmp_path / "a.parquet").write_bytes(b"PAR1 but not really")
    code, out = _run(str(tmp_path), "--out", str(tmp_path / "o"))
    assert code == 2 and "a.parquet: not a readable parquet file" in out
    assert not (tmp_path / "o").exists()
