"""`cli.py audit` refuses bad input with one line naming the file, before any Ray or model work: the
real command in a subprocess (its error boundary lives in the entry point, not in the typer app)."""
from __future__ import annotations

from tests.test_hostile_audit import audit


def _error(tmp_path, *args):
    (tmp_path / "in").mkdir(exist_ok=True)
    run, out = audit(tmp_path, *args)
    assert run.rc == 2 and len(run.error_lines) == 1, run.out[-2000:]
    assert not out.exists()
    return run.error_lines[0]


def test_missing_input(tmp_path):
    assert _error(tmp_path, tmp_path / "nope.parquet") == f"error: {tmp_path / 'nope.parquet'}: no such file or folder"


def test_bad_config(tmp_path):
    cfg = tmp_path / "audit.yaml"
    cfg.write_text("max_pixels: -3\n")
    line = _error(tmp_path, tmp_path / "in", "--config", str(cfg))
    assert line.startswith(f"error: {cfg}: max_pixels: Input should be greater than or equal to 1")


def test_unreadable_parquet(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.parquet").write_bytes(b"PAR1 but not really")
    assert _error(tmp_path, tmp_path / "in").startswith(f"error: {tmp_path / 'in' / 'a.parquet'}: not a readable parquet file")
