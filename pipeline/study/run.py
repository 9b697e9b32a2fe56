"""`cli.py agreement STUDY`: read the study's pairs and votes, compute the figures, write them.

    <study>/agreement/summary.json   every figure (docs/human_study.md, "Figures")
    <study>/agreement/report.html    the same, self-contained

It only reads the votes, so it may run while the annotation server is still up (a vote being
written is a torn last line, which is left out until it is whole).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.store import write_bytes
from pipeline.study.card import AGREEMENT_DIR, update_card
from schemas.errors import VipoError
from schemas.study import STUDY_FILE


class StudyFolderError(VipoError, FileNotFoundError):
    """Not a study folder."""


@dataclass(frozen=True)
class AgreementResult:
    summary: dict
    summary_path: Path
    report: Path
    card: Path | None


def run_agreement(study: str | Path, min_votes: int = 2, resamples: int = 2000, seed: int = 0) -> AgreementResult:
    from pipeline.eval.stats import Bootstrap
    from pipeline.study.agreement import analyse, read_study_votes
    from pipeline.study.report import render_report
    from pipeline.study.votes import load_study

    study = Path(study)
    if not (study / STUDY_FILE).is_file():
        raise StudyFolderError(f"{study}: not a study folder (no {STUDY_FILE}); make one with `cli.py annotate BUILD`")
    loaded = load_study(study)  # study.json and pairs.parquet, checked (one line naming the file)
    meta, raters = loaded.meta, list(loaded.meta["raters"])
    pairs, votes = pd.DataFrame(list(loaded.pairs)), read_study_votes(study)
    if votes.empty:
        raise StudyFolderError(f"{study}: no votes yet (votes/ is empty); collect some with `cli.py annotate {study}`")
    summary = analyse(pairs, votes, raters, Bootstrap(resamples, 0.95, seed), min_votes=min_votes)
    summary = {"study": str(study.resolve()), "source": meta.get("source"), **summary}
    out = study / AGREEMENT_DIR
    summary_path = write_bytes(out / "summary.json", (json.dumps(summary, indent=2, allow_nan=False) + "\n").encode())
    report = write_bytes(out / "report.html", render_report(summary).encode())
    card = update_card(study.parent) if (study.parent / "card" / "README.md").is_file() else None
    return AgreementResult(summary, summary_path, report, card)
