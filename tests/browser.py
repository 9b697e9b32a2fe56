"""Headless Chromium for the report tests: a page's console lines and its screenshot.

A report is meant to open with no script, no external fetch and nothing the CSP has to block, so
"renders" means: Chromium exits 0, logs no console/CSP/uncaught lines, and the screenshot is not blank.
Without chromium the test is skipped locally and fails on CI (.ci/run installs it).
"""
from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest


def chromium() -> str:
    """The chromium binary; skips the test when absent (fails it under CI)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs it)")
        pytest.skip("chromium is not installed")
    return found


def screenshot(page, tmp_path) -> tuple[list[str], np.ndarray]:
    """Console lines (errors, uncaught exceptions, blocked content) and the screenshot of `page`."""
    from PIL import Image

    shot = tmp_path / f"{page.stem}.png"
    proc = subprocess.run(
        [chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr", "--v=0",
         "--hide-scrollbars", "--window-size=1200,2000", f"--user-data-dir={tmp_path / 'profile'}",
         f"--screenshot={shot}", page.as_uri()],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line
               or "Content Security Policy" in line or "Refused to" in line]
    return console, np.asarray(Image.open(shot).convert("RGB"))
