"""report.html of `cli.py agreement`: how people agree with each other and with the raters, one
self-contained page in the eval report's style (no script, inline PNG, the CSP meta).

Annotator ids are validated (schemas.study.ANNOTATOR_ID), but categories, rater names and the title
come from users' files, so every string goes through `esc` (and `_label` inside the plot, where
matplotlib would read `$...$` as math). A figure with no data is "n/a"; a plot with nothing to draw
is left out.
"""
from __future__ import annotations

import warnings
from typing import Any

from pipeline.eval.report import _dig, _img, _label, _point, _pyplot, interval
from pipeline.html_report import CSP, STYLE, esc, png_uri, table

_STYLE = STYLE + ".sub{color:#555}\n"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _with_n(iv: dict[str, Any] | None) -> str:
    """`estimate [low, high] (n=…)`: a share's reliability depends on n, so it is always shown."""
    return f"{interval(iv)} (n={(iv or {}).get('n', 0)})"


def rater_plot(summary: dict[str, Any]) -> str | None:
    """Each rater's agreement with the human majority (bars, interval error bars) against the
    annotators' mean agreement with the others' majority (dashed line); None with no data."""
    rows = [(_label(r), *pt) for r, v in summary.get("raters", {}).items() if (pt := _point(_dig(v, "overall")))]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(rows) + 1.4))
    y = list(range(len(rows)))[::-1]
    ax.barh(y, [r[1] for r in rows], xerr=[[r[2] for r in rows], [r[3] for r in rows]],
            color="#4c72b0", capsize=3, height=0.6)
    human = _dig(summary, "annotator_agreement", "mean", "estimate")
    if human is not None:
        ax.axvline(human, color="#c44e52", ls="--", lw=1.5, label="annotators vs the others' majority")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax.axvline(0.5, color="#888", ls=":", lw=1)
    ax.set_yticks(y, [r[0] for r in rows])
    ax.set_xlim(0, 1)
    ax.set_xlabel("agreement with the human majority")
    ax.set_title("Raters against the human majority")
    return png_uri(fig)


def _card(title: str, big: str, lines: list[str]) -> str:
    rest = "".join(f"<br>{esc(line)}" for line in lines)
    return f'<div class="card"><b>{esc(title)}</b><div class="big">{esc(big)}</div>{rest}</div>'


def _cards(summary: dict[str, Any]) -> str:
    ann = summary.get("annotator_agreement", {})
    sc = _dig(summary, "self_consistency", "overall")
    vlm = _dig(summary, "raters", "vlm")
    cards = [
        _card("Annotator agreement with the majority", _pct(_dig(ann, "mean", "estimate")),
              [interval(ann.get("mean")), f"unweighted mean of annotators: {_pct(ann.get('unweighted_mean'))}"]),
        _card("Krippendorff's alpha", _num(summary.get("alpha")),
              [f"raw pairwise agreement: {_pct(summary.get('pairwise_agreement'))}"]),
        _card("Self-consistency", _pct(_dig(sc, "estimate")), [interval(sc), f"n = {(sc or {}).get('n', 0)} repeats"]),
        _card("VLM agreement with the majority", _pct(_dig(vlm, "overall", "estimate")),
              [interval(_dig(vlm, "overall")), f"coverage: {_pct(_dig(vlm, 'coverage'))}"] if vlm else ["no VLM votes in this study"]),
    ]
    return '<div class="cards">' + "".join(cards) + "</div>"


def _header(summary: dict[str, Any]) -> list[str]:
    b = summary.get("bootstrap") or {}
    line = (f"{esc(summary.get('pairs'))} pairs · {esc(len(summary.get('annotators', [])))} annotators · "
            f"{esc(summary.get('votes'))} first-showing votes, {esc(summary.get('repeat_votes', 0))} repeats, "
            f"{esc(summary.get('skips'))} skips · {esc(summary.get('pairs_with_majority'))} pairs with a majority, "
            f"{esc(summary.get('no_majority'))} with no majority, {esc(summary.get('too_few_votes', 0))} with fewer than "
            f"{esc(summary.get('min_votes'))} voters · bootstrap: {esc(b.get('resamples'))} resamples of pairs, "
            f"{esc(_pct(b.get('confidence')))} intervals")
    where = " · ".join(f"{k}: <code>{esc(summary[k])}</code>" for k in ("study", "source") if summary.get(k))
    return [f"<h1>Human study: {esc(_title(summary))}</h1>", f'<p class="sub">{line}</p>',
            f'<p class="sub">{where}</p>' if where else ""]


def _title(summary: dict[str, Any]) -> str:
    """`title`, else the study folder's name (run_agreement adds `study`), else "agreement"."""
    study = str(summary.get("study") or "").rstrip("/\\")
    return str(summary.get("title") or study.rsplit("/", 1)[-1] or "agreement")


def _raters(summary: dict[str, Any]) -> list[str]:
    raters = summary.get("raters", {})
    if not raters:
        return []
    cats = list(summary.get("by_category", {}))
    rows = [[r, _with_n(_dig(v, "overall")), _pct(_dig(v, "coverage")),
             *[_with_n(_dig(v, "by_category", c)) for c in cats]] for r, v in raters.items()]
    plot = rater_plot(summary)
    return ["<h2>Raters against the human majority</h2>",
            "<p>Share of the pairs with a human majority, among those the rater decides, where the rater prefers the "
            "same side; coverage is the share of majority pairs it decides.</p>",
            _img(plot, "raters' agreement with the human majority") if plot else "",
            table(["rater", "overall [low, high]", "coverage", *cats], rows)]


def _share_iv(entry: dict[str, Any] | None, key: str) -> str:
    """A by_annotator entry ({key, n, low, high}) as `estimate [low, high]`."""
    entry = entry or {}
    return interval({"estimate": entry.get(key), "low": entry.get("low"), "high": entry.get("high")})


def _annotators(summary: dict[str, Any]) -> list[str]:
    by = _dig(summary, "annotator_agreement", "by_annotator") or {}
    sc = _dig(summary, "self_consistency", "by_annotator") or {}
    rows = [[a, _share_iv(by.get(a), "agreement"), _dig(by, a, "n") or 0,
             _share_iv(sc.get(a), "consistency"), _dig(sc, a, "n") or 0] for a in summary.get("annotators", [])]
    return ["<h2>Annotators</h2>",
            table(["annotator", "agreement with the others' majority [low, high]", "n", "self-consistency [low, high]",
                   "repeats"], rows)]


def _categories(summary: dict[str, Any]) -> list[str]:
    rows = [[c, v.get("pairs"), v.get("pairs_with_majority", "n/a"), _with_n(v.get("annotator_agreement"))]
            for c, v in summary.get("by_category", {}).items()]
    return ["<h2>By category</h2>",
            table(["category", "pairs", "with a majority", "annotator agreement with the others' majority"], rows)]


def _how_to_read(summary: dict[str, Any]) -> str:
    confidence = esc(_pct(_dig(summary, "bootstrap", "confidence")))
    return (
        "<h2>How to read this</h2><p>A pair's human majority is the side most of its annotators preferred (a tie "
        "counts for neither side; a balanced pair has no majority). Each annotator is measured against the majority of "
        "the <em>other</em> annotators, so that nobody is compared with a reference they helped make; people disagree "
        "with each other too, so this is the reference for a rater: one agreeing with the majority about as often as "
        "the annotators do (the dashed line) judges about as well as one more annotator would. A rater's share counts "
        "only the pairs it decides; read it with its coverage. Krippendorff's alpha is agreement beyond chance (1: "
        "perfect, 0: chance level); self-consistency is how often an annotator gave the same answer to a pair shown "
        f"again. Intervals are {confidence} bootstrap intervals resampling pairs: with a few hundred pairs they are "
        "several points wide, and differences smaller than that are not evidence.</p>"
    )


def render_report(summary: dict[str, Any]) -> str:
    """The HTML text of the study's report.html, from summary.json's contents."""
    with warnings.catch_warnings():  # a glyph missing from the font in a user's name is not an error
        warnings.simplefilter("ignore", UserWarning)
        body = [*_header(summary), _cards(summary), *_raters(summary), *_annotators(summary), *_categories(summary),
                _how_to_read(summary)]
    return "\n".join([
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        f"<title>vipo human study: {esc(_title(summary))}</title><style>{_STYLE}</style></head><body>",
        *body,
        "</body></html>",
    ])
