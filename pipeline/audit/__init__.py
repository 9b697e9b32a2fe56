"""`cli.py audit`: measure how noisy a preference dataset is, and split it into consistent and
conflicting pairs. Modules: read (inputs, units), stage (scoring actor), analyse (agreement figures),
export (subsets in the input's schema), report (report.html), run (the driver), sample (demo data).

`pipeline.audit.run_audit` is the entry point; it is imported on first use, so that
`python -m pipeline.audit.sample` does not pull in Ray and the models.
"""
from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "run_audit":
        from pipeline.audit.run import run_audit

        return run_audit
    raise AttributeError(f"module 'pipeline.audit' has no attribute {name!r}")
