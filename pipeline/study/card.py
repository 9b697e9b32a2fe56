"""The human study's figures in the dataset card, when the study folder lives inside the build folder.

`cli.py agreement` writes the section into card/README.md at once; the build's card writer adds it
again whenever it rewrites the card, so a rebuilt card keeps it.
"""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.store import write_bytes

BEGIN, END = "<!-- vipo:human-study -->", "<!-- /vipo:human-study -->"
AGREEMENT_DIR = "agreement"


def _pct(iv: dict | None) -> str:
    if not iv or iv.get("estimate") is None:
        return "n/a"
    text = f"{100 * iv['estimate']:.1f}%"
    if iv.get("low") is not None and iv.get("high") is not None:
        text += f" [{100 * iv['low']:.1f}, {100 * iv['high']:.1f}]"
    return text


def _one(name: str, s: dict) -> list[str]:
    aa = s.get("annotator_agreement", {})
    alpha = "n/a" if s.get("alpha") is None else f"{s['alpha']:.3f}"
    lines = [
        f"### Study `{name}`",
        "",
        f"{s.get('pairs', 0)} pairs, {len(s.get('annotators', []))} annotators, {s.get('votes', 0)} votes "
        f"({s.get('pairs_with_majority', 0)} pairs with a human majority). Intervals: 95% bootstrap over pairs.",
        "",
        f"- Annotators' agreement with the majority of the others: {_pct(aa.get('mean'))}",
        f"- Krippendorff's alpha: {alpha}",
        f"- Self-consistency on repeated pairs: {_pct((s.get('self_consistency') or {}).get('overall'))}",
        "",
        "| rater | agreement with the human majority | pairs |",
        "|---|---|---|",
    ]
    for rater, r in (s.get("raters") or {}).items():
        lines.append(f"| {rater} | {_pct(r.get('overall'))} | {(r.get('overall') or {}).get('n', 0)} |")
    return lines + [""]


def study_section(build_dir: str | Path) -> str:
    """Markdown for every study folder directly inside `build_dir` that has been analysed ("" if none)."""
    found = sorted(Path(build_dir).glob(f"*/{AGREEMENT_DIR}/summary.json"))
    if not found:
        return ""
    lines = [BEGIN, "## Human study", "",
             "How far the automatic raters agree with people on a sample of this dataset's pairs "
             "(`cli.py annotate`, `cli.py agreement`; docs/human_study.md).", ""]
    for path in found:
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        lines += _one(path.parent.parent.name, summary)
    return "\n".join(lines + [END]) + "\n"


def update_card(build_dir: str | Path) -> Path | None:
    """Put the section into card/README.md (replacing an earlier one); None when there is no card."""
    card = Path(build_dir) / "card" / "README.md"
    if not card.is_file():
        return None
    text = card.read_text(encoding="utf-8")
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head.rstrip("\n") + "\n\n" + rest.split(END, 1)[1].lstrip("\n")
    section = study_section(build_dir)
    text = text.rstrip("\n") + "\n\n" + section if section else text
    return write_bytes(card, text.encode("utf-8"))
