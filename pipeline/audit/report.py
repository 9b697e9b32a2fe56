"""report.html: one self-contained page (plots as inline PNG, thumbnails as data URIs, no script).

Everything that comes from the dataset (captions, model names, file names, error text) is untrusted
and goes through `esc` (`html.escape`); a Content-Security-Policy that allows no script backs that up, so a
caption that slipped through could not run anyway. The shared pieces live in `pipeline.html_report`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.html_report import CSP, STYLE, esc, png_uri, table, thumbnail_uri

__all__ = ["render_report", "thumbnail_uri"]  # thumbnail_uri: re-exported for the audit run

_STYLE = STYLE + """
.pair{border:1px solid #ddd;border-radius:6px;margin:1rem 0;padding:.8rem}.imgs{display:flex;gap:1rem}
.imgs figure{margin:0;max-width:200px}.imgs img{width:180px;height:auto}.pref{outline:4px solid #2a9d3a}.cap{font-style:italic;margin:.3rem 0}
.agree{color:#2a9d3a}.dissent{color:#c0392b;font-weight:600}
"""


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _figures(summary: dict[str, Any]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, str] = {}
    models = summary["reward_models"]
    agree = [summary["agreement_with_label"][m] or 0.0 for m in models]
    fig, ax = plt.subplots(figsize=(6.5, 3))
    ax.bar(models, [100 * a for a in agree], color="#4c72b0")
    both = summary["all_agree_with_label"]["share"]
    if both is not None:
        ax.axhline(100 * both, color="#c0392b", ls="--", label=f"all {len(models)} agree with the label")
        ax.legend(loc="lower right")
    ax.set_ylim(0, 100)
    ax.set_ylabel("% of scored pairs")
    ax.set_title("Agreement with the human label")
    out["agreement"] = png_uri(fig)

    matrix = summary["pairwise_agreement"]["matrix"]
    if matrix is not None:
        m = np.asarray(matrix, dtype=float) * 100
        fig, ax = plt.subplots(figsize=(5.2, 4.4))
        im = ax.imshow(m, vmin=0, vmax=100, cmap="viridis")
        ax.set_xticks(range(len(models)), models, rotation=35, ha="right")
        ax.set_yticks(range(len(models)), models)
        for i in range(len(models)):
            for j in range(len(models)):
                ax.text(j, i, f"{m[i, j]:.1f}", ha="center", va="center", color="white" if m[i, j] < 60 else "black", fontsize=9)
        fig.colorbar(im, ax=ax, label="% of pairs both decide, same vote")
        ax.set_title("Pairwise agreement between reward models")
        out["matrix"] = png_uri(fig)

    kinds = list(summary["conflicts"]["kinds"].items())[:15]
    if kinds:
        fig, ax = plt.subplots(figsize=(6.5, 0.35 * len(kinds) + 1))
        ax.barh([k for k, _ in kinds][::-1], [c for _, c in kinds][::-1], color="#dd8452")
        ax.set_xlabel("conflicting pairs")
        ax.set_title("Which models vote against the label")
        out["kinds"] = png_uri(fig)

    sources = summary["by_source_model"]
    if sources:
        names = list(sources)
        fig, ax = plt.subplots(figsize=(6.5, 0.35 * len(names) + 1))
        ax.barh(names[::-1], [100 * sources[n]["consistent_share"] for n in names][::-1], color="#55a868")
        ax.set_xlim(0, 100)
        ax.set_xlabel("% consistent pairs")
        ax.set_title("Consistent share by source model")
        out["sources"] = png_uri(fig)
    return out


def _example(ex: dict[str, Any], models: list[str]) -> str:
    human = 0 if ex["label_0"] == 1.0 else 1
    figs = []
    for side in (0, 1):
        uri = ex.get(f"thumb_{side}")
        img = f'<img src="{uri}" alt="image {side}" class="{"pref" if side == human else ""}">' if uri else "<p>(no preview)</p>"
        who = " — preferred by the human" if side == human else ""
        figs.append(f"<figure>{img}<figcaption>image {side}: {esc(ex.get(f'model_{side}'))}{esc(who)}</figcaption></figure>")
    rows = []
    for m in models:
        s0, s1 = ex[f"{m}_0"], ex[f"{m}_1"]
        vote = 0 if s0 > s1 else 1 if s1 > s0 else None
        ok = vote == human
        rows.append(f'<tr><td class="l">{esc(m)}</td><td>{s0:.4f}</td><td>{s1:.4f}</td>'
                    f'<td class="{"agree" if ok else "dissent"}">{"image " + str(vote) if vote is not None else "tie"}</td></tr>')
    scores = ("<table><tr><th class='l'>model</th><th>image 0</th><th>image 1</th><th>prefers</th></tr>"
              + "".join(rows) + "</table>")
    return (f'<div class="pair"><div><b>{esc(ex["file"])}</b> row {int(ex["row"])} · {esc(ex["kind"])}</div>'
            f'<p class="cap">{esc(ex.get("caption"))}</p><div class="imgs">{"".join(figs)}{scores}</div></div>')


def render_report(summary: dict[str, Any], examples: list[dict[str, Any]], skipped: Sequence[dict[str, Any]] = ()) -> str:
    """The HTML text of report.html."""
    models = summary["reward_models"]
    figs = _figures(summary)
    n = len(models)
    cards = [
        ("pairs read", f"{summary['pairs_read']:,}"),
        ("pairs scored", f"{summary['pairs_scored']:,}"),
        (f"all {n} agree with each other", _pct(summary["all_agree_with_each_other"]["share"])),
        (f"all {n} agree with the label (consistent)", _pct(summary["all_agree_with_label"]["share"])),
        ("majority agrees with the label", _pct(summary["majority_agrees_with_label"]["share"])),
    ]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        f"<title>vipo audit: {esc(summary.get('input'))}</title><style>{_STYLE}</style></head><body>",
        (f"<h1>Preference-data audit</h1><p>input: <code>{esc(summary.get('input'))}</code> · "
         f"reward models: {esc(', '.join(models))}</p>"),
        '<div class="cards">' + "".join(f'<div class="card"><div class="big">{esc(v)}</div>{esc(k)}</div>' for k, v in cards) + "</div>",
        "<h2>Rows</h2>",
        table(["", "pairs"], [["read", summary["pairs_read"]], ["scored", summary["pairs_scored"]],
                               *[[f"skipped: {k}", v] for k, v in summary["skipped"].items()]]),
        "<h2>Agreement with the human label</h2>",
        f'<img class="plot" alt="agreement with the label" src="{figs["agreement"]}">',
        table(["reward model", "agrees with the label"], [[m, _pct(summary["agreement_with_label"][m])] for m in models]),
    ]
    if "matrix" in figs:
        parts += ["<h2>Pairwise agreement between reward models</h2>",
                  f'<img class="plot" alt="pairwise agreement heatmap" src="{figs["matrix"]}">']
    kinds = summary["conflicts"]["kinds"]
    parts += [f"<h2>Conflicts ({summary['conflicts']['pairs']:,} pairs)</h2>"]
    if "kinds" in figs:
        parts.append(f'<img class="plot" alt="conflict kinds" src="{figs["kinds"]}">')
    parts.append(table(["models voting against the label", "pairs"], [[k, v] for k, v in kinds.items()]))
    sources = summary["by_source_model"]
    if sources:
        parts += ["<h2>By source model</h2>"]
        if "sources" in figs:
            parts.append(f'<img class="plot" alt="consistent share by source model" src="{figs["sources"]}">')
        parts.append(table(["source model", "pairs", "consistent", *models],
                            [[s, v["pairs"], _pct(v["consistent_share"]), *[_pct(v["agreement_with_label"][m]) for m in models]]
                             for s, v in sources.items()]))
    exports = summary.get("exports", {})
    if exports:
        parts += ["<h2>Exports</h2>", table(["file", "rows"], [[f"{k}.parquet", v] for k, v in exports.items()])]
    if examples:
        parts += [f"<h2>Example conflicting pairs ({len(examples)})</h2>",
                  "<p>Green outline: the image the human preferred. Red: a model voting against the label.</p>"]
        parts += [_example(ex, models) for ex in examples]
    if skipped:
        parts += [f"<h2>Skipped rows (first {len(skipped)})</h2>",
                  table(["file", "row", "reason", "detail"], [[r["file"], r["row"], r["reason"], r["detail"]] for r in skipped], left=4)]
    parts.append("</body></html>")
    return "\n".join(parts)
