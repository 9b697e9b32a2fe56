"""report.html of `cli.py eval`: base vs candidates, one self-contained page (no script).

Prompts, model names, metric names and the rater's name come from users' files, so every string
goes through `esc` (and, inside plots, through `_label`, since matplotlib reads `$...$` as math). The
page loads nothing: plots are inline PNGs, media are the data URIs the caller made with
`pipeline.html_report`'s helpers, and the CSP meta forbids anything else. Any figure can be missing
(an interval with no data, a model that produced nothing): it is "n/a" in a table and left out of a
plot, and a plot with nothing to draw is left out of the page.
"""
from __future__ import annotations

import warnings
from typing import Any

from pipeline.html_report import CSP, STYLE, esc, png_uri, table

_STYLE = STYLE + """
.sub{color:#555}.sig{color:#2a9d3a;font-weight:600}.nsig{color:#777}
.grid{border:1px solid #ddd;border-radius:6px;margin:1rem 0;padding:.8rem}.cap{font-style:italic;margin:.3rem 0}
.imgs{display:flex;gap:1rem;flex-wrap:wrap}.imgs figure{margin:0;width:220px}.imgs img.poster{width:200px;height:auto}
.strip{display:flex;gap:2px;margin-top:2px}.strip img{width:48px;height:auto}figcaption{font-size:.85rem}
figcaption ul{margin:.2rem 0;padding-left:1rem}
"""
_MAX_LABEL = 48

Interval = dict[str, Any]


# -- numbers ----------------------------------------------------------------------------------------
def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _signed(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.4f}"


def _prob(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def p_value(p: float | None) -> str:
    """A sign-test p: 3.2e-05 below 0.001, else two significant digits (0.41, 0.0012, 1)."""
    if p is None:
        return "n/a"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.2g}"


def _bounds(iv: Interval | None, fmt=_pct) -> str:
    lo, hi = (iv or {}).get("low"), (iv or {}).get("high")
    return "[n/a]" if lo is None or hi is None else f"[{fmt(lo)}, {fmt(hi)}]"


def interval(iv: Interval | None, fmt=_pct) -> str:
    """`estimate [low, high]`; n/a where there is no data."""
    if not iv or iv.get("estimate") is None:
        return "n/a"
    return f"{fmt(iv['estimate'])} {_bounds(iv, fmt)}"


def _dig(obj: Any, *keys: str) -> Any:
    """obj[k1][k2]..., None where a level is missing or None."""
    for k in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(k)
    return obj


def _wlt(c: dict[str, Any]) -> str:
    return f"{c.get('wins', 0)}/{c.get('losses', 0)}/{c.get('ties', 0)}"


# -- plots ------------------------------------------------------------------------------------------
def _label(text: Any) -> str:
    """A string as plain matplotlib text: `$` would start mathtext (and can fail to parse), newlines
    would break the layout, and a long name would squeeze the axes."""
    s = " ".join(str(text).split()).replace("$", r"\$")
    return s if len(s) <= _MAX_LABEL else s[: _MAX_LABEL - 1] + "…"


def _point(iv: Interval | None) -> tuple[float, float, float] | None:
    """(estimate, minus, plus) for an error bar; None without an estimate."""
    if not iv or iv.get("estimate") is None:
        return None
    e = float(iv["estimate"])
    lo, hi = iv.get("low"), iv.get("high")
    return e, max(0.0, e - lo) if lo is not None else 0.0, max(0.0, hi - e) if hi is not None else 0.0


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def forest_plot(summary: dict[str, Any]) -> str | None:
    """One row per candidate x metric: the overall win rate and its interval; None with no data."""
    rows = []
    for cand, comp in summary["comparisons"].items():
        for metric in summary["metrics"]:
            pt = _point(_dig(comp, "overall", metric, "win_rate"))
            if pt is not None:
                rows.append((f"{_label(cand)} · {_label(metric)}", *pt))
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(rows) + 1.2))
    y = list(range(len(rows)))[::-1]
    ax.errorbar([r[1] for r in rows], y, xerr=[[r[2] for r in rows], [r[3] for r in rows]],
                fmt="o", color="#4c72b0", ecolor="#4c72b0", capsize=3)
    ax.axvline(0.5, color="#888", ls="--", lw=1)
    ax.set_yticks(y, [r[0] for r in rows])
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel("win rate against the base (ties count one half)")
    ax.set_title("Win rates against the base")
    return png_uri(fig)


def category_plot(summary: dict[str, Any], cand: str) -> str | None:
    """Categories x metrics: grouped horizontal bars of the candidate's win rate; None with no data."""
    cats, metrics = summary["categories"], summary["metrics"]
    by_cat = _dig(summary, "comparisons", cand, "by_category")
    points = {(c, m): _point(_dig(by_cat, c, m, "win_rate")) for c in cats for m in metrics}
    if not metrics or not any(points.values()):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.16 * len(cats) * len(metrics) + 1.2)))
    width = 0.8 / len(metrics)
    colors = plt.get_cmap("tab10")
    for j, m in enumerate(metrics):
        ys, xs, lo, hi = [], [], [], []
        for i, c in enumerate(cats):
            pt = points[(c, m)]
            if pt is not None:
                ys.append(len(cats) - 1 - i + 0.4 - (j + 0.5) * width)
                xs.append(pt[0])
                lo.append(pt[1])
                hi.append(pt[2])
        if xs:  # a label starting with "_" would be left out of the legend
            ax.barh(ys, xs, height=width, xerr=[lo, hi], color=colors(j % 10), capsize=2, label=_label(m).lstrip("_"))
    for i, c in enumerate(cats):
        if not any(points[(c, m)] for m in metrics):
            ax.text(0.02, len(cats) - 1 - i, "no data", va="center", color="#888")
    ax.axvline(0.5, color="#888", ls="--", lw=1)
    ax.set_yticks(range(len(cats))[::-1], [_label(c) for c in cats])
    ax.set_xlim(0, 1)
    ax.set_xlabel("win rate against the base")
    ax.set_title(f"{_label(cand)}: win rate by category")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    return png_uri(fig)


def _img(uri: str | None, alt: str, cls: str = "plot") -> str:
    """An <img> of a data URI; anything that is not one is left out (the CSP would block it anyway)."""
    if not isinstance(uri, str) or not uri.startswith("data:image/"):
        return ""
    return f'<img class="{cls}" alt="{esc(alt)}" src="{esc(uri)}">'


# -- sections ---------------------------------------------------------------------------------------
def _header(summary: dict[str, Any]) -> list[str]:
    p, b = summary["prompts"], summary["bootstrap"]
    line = (f"output: <code>{esc(summary.get('output_dir'))}</code> · created {esc(summary.get('created'))} · "
            f"prompts: {esc(p.get('source'))} ({esc(p.get('detail'))}) · {esc(p.get('seeds_per_prompt'))} seed(s) per prompt · "
            f"bootstrap: {esc(b.get('resamples'))} resamples by {esc(b.get('unit'))}, "
            f"{esc(_pct(b.get('confidence')))} intervals")
    models = [["base", summary["base"]]] + [["candidate", c] for c in summary["candidates"]]
    return [f"<h1>{esc(summary.get('title'))}</h1>", f'<p class="sub">{line}</p>',
            table(["role", "name", "generator", "model", "weights"],
                  [[role, m.get("name"), m.get("generator"), m.get("model"), m.get("weights") or "—"] for role, m in models],
                  left=5)]


def _cards(summary: dict[str, Any]) -> list[str]:
    metric = summary["metrics"][0] if summary["metrics"] else None
    cards = []
    for cand in summary["candidates"]:
        name = cand["name"]
        comp = _dig(summary, "comparisons", name, "overall", metric) if metric else None
        iv = _dig(comp, "win_rate")
        big = _pct(_dig(iv, "estimate"))
        bounds = _bounds(iv) if big != "n/a" else ""
        p = esc(p_value(_dig(comp, "sign_test_p")))
        verdict = (f'<span class="sig">significant</span> (sign test p = {p})' if _dig(comp, "significant")
                   else f'<span class="nsig">not significant</span> (sign test p = {p})')
        cards.append(f'<div class="card"><b>{esc(name)}</b><div class="big">{esc(big)}</div>{esc(bounds)}<br>'
                     f"win rate vs {esc(summary['base']['name'])} on {esc(metric or 'no metric')}<br>{verdict}</div>")
    return ['<div class="cards">' + "".join(cards) + "</div>"] if cards else []


def _comparison_row(c: dict[str, Any] | None) -> list[str]:
    if not c:
        return ["n/a", "n/a", "n/a", "n/a"]
    return [interval(c.get("win_rate")), _wlt(c), p_value(c.get("sign_test_p")), interval(c.get("mean_difference"), _signed)]


_COMPARISON_HEAD = ["win rate [low, high]", "W/L/T", "sign-test p", "mean difference [low, high]"]


def _win_rates(summary: dict[str, Any]) -> list[str]:
    out = ["<h2>Win rates against the base</h2>",
           "<p>Share of (prompt, seed) pairs where the candidate scores better than the base (ties count one half); "
           "intervals resample prompts. W/L/T: wins, losses, ties.</p>"]
    forest = forest_plot(summary)
    if forest:
        out.append(_img(forest, "forest plot of win rates"))
    rows = [[m, cand, *_comparison_row(_dig(comp, "overall", m))]
            for m in summary["metrics"] for cand, comp in summary["comparisons"].items()]
    out.append(table(["metric", "candidate", *_COMPARISON_HEAD], rows, left=2))
    return out


def _direction(summary: dict[str, Any], metric: str) -> str:
    if metric not in summary["metrics"]:
        return "descriptive, not ranked"
    return "higher is better" if summary.get("higher_is_better", {}).get(metric, True) else "lower is better"


def _means(summary: dict[str, Any]) -> list[str]:
    metrics = list(dict.fromkeys([*summary["metrics"], *summary.get("descriptive_metrics", [])]))
    cats = summary["categories"]
    out = ["<h2>Means</h2>"]
    for m in metrics:
        rows = []
        for model, mean in summary["means"].items():
            rows.append([model, interval(_dig(mean, "overall", m), _num),
                         *[interval(_dig(mean, "by_category", c, m), _num) for c in cats]])
        out += [f"<h3>{esc(m)} <small>({esc(_direction(summary, m))})</small></h3>",
                table(["model", "overall", *cats], rows)]
    return out


def _by_category(summary: dict[str, Any]) -> list[str]:
    per = summary["prompts"].get("per_category", {})
    out = ["<h2>By category</h2>",
           "<p>Prompts per category: " + esc(", ".join(f"{c}: {per.get(c, 0)}" for c in summary["categories"])) + "</p>"]
    for cand, comp in summary["comparisons"].items():
        out.append(f"<h3>{esc(cand)}</h3>")
        plot = category_plot(summary, cand)
        if plot:
            out.append(_img(plot, f"win rate by category: {cand}"))
        rows = [[c, m, *_comparison_row(_dig(comp, "by_category", c, m))]
                for c in summary["categories"] for m in summary["metrics"]]
        out.append(table(["category", "metric", *_COMPARISON_HEAD], rows, left=2))
    return out


def _vlm_row(scope: str, v: dict[str, Any] | None) -> list[str]:
    if not v:
        return [scope, *["n/a"] * 6]
    return [scope, interval(v.get("p_candidate"), _prob), interval(v.get("win_rate")), _wlt(v),
            p_value(v.get("sign_test_p")), _pct(v.get("position_consistency")),
            "yes" if v.get("significant") else "no"]


def _vlm(summary: dict[str, Any]) -> list[str]:
    judged = {c: comp["vlm"] for c, comp in summary["comparisons"].items() if _dig(comp, "vlm")}
    if not judged:
        return []
    out = ["<h2>VLM rater</h2>",
           f"<p>rater: <code>{esc(summary.get('vlm_rater'))}</code>. P(candidate better) is the rater's swap-debiased "
           "probability per pair; position consistency is the share of pairs it judged the same both ways round.</p>"]
    head = ["scope", "P(candidate better) [low, high]", "win rate [low, high]", "W/L/T", "sign-test p",
            "position consistency", "significant"]
    for cand, v in judged.items():
        rows = [_vlm_row("overall", v.get("overall"))]
        rows += [_vlm_row(c, _dig(v, "by_category", c)) for c in summary["categories"]]
        out += [f"<h3>{esc(cand)}</h3>", table(head, rows)]
    return out


def _alignment(summary: dict[str, Any]) -> list[str]:
    align = summary.get("alignment")
    if not align:
        return []
    cats = summary["categories"]
    rows = [[model, interval(_dig(a, "overall"), _prob), *[interval(_dig(a, "by_category", c), _prob) for c in cats]]
            for model, a in align.items()]
    return ["<h2>Alignment (VQAScore)</h2>",
            "<p>Mean P(\"Yes\") of the VLM asked whether the image shows the prompt.</p>",
            table(["model", "overall", *cats], rows)]


def _cell(cell: dict[str, Any], base: bool) -> str:
    poster = _img(cell.get("poster"), f"{cell.get('model')}", "poster") or "<p>(no preview)</p>"
    frames = "".join(_img(f, f"frame {i}", "frame") for i, f in enumerate(cell.get("frames") or []))
    strip = f'<div class="strip">{frames}</div>' if frames else ""
    scores = "".join(f"<li>{esc(m)}: {esc(_num(v))}</li>" for m, v in (cell.get("scores") or {}).items())
    role = " (base)" if base else ""
    return (f"<figure>{poster}{strip}<figcaption><b>{esc(cell.get('model'))}</b>{role}"
            f"<ul>{scores}</ul></figcaption></figure>")


def _examples(grids: list[dict[str, Any]]) -> list[str]:
    if not grids:
        return []
    out = [f"<h2>Examples ({len(grids)})</h2>", "<p>Every model on the same prompt and seed; the first is the base.</p>"]
    for g in grids:
        cells = "".join(_cell(c, i == 0) for i, c in enumerate(g.get("cells", [])))
        out.append(f'<div class="grid"><div>{esc(g.get("category"))} · {esc(g.get("modality"))} · seed {esc(g.get("seed"))}</div>'
                   f'<p class="cap">{esc(g.get("prompt"))}</p><div class="imgs">{cells}</div></div>')
    return out


def _counts(summary: dict[str, Any]) -> list[str]:
    rows = []
    for model, c in summary.get("counts", {}).items():
        failed = ", ".join(f"{k}: {v}" for k, v in (c.get("failed") or {}).items()) or "none"
        rows.append([model, c.get("candidates"), c.get("generated"), c.get("scored"), failed])
    return ["<h2>Counts</h2>", table(["model", "candidates", "generated", "scored", "failed"], rows)]


_NOT_MEASURED = (
    "<h2>What is not measured</h2><p>GenEval needs its object detector (Mask2Former) and CLIP weights, and "
    "DPG-Bench needs its mPLUG VQA judge; vipo ships no such weights, so neither benchmark is run here. The reward "
    "models and the VLM rater are themselves models with their own biases (towards some styles, resolutions and "
    "prompt kinds): a win against the base is a win by their lights, worth checking by eye in the examples above.</p>"
)


def render_report(summary: dict[str, Any], grids: list[dict[str, Any]]) -> str:
    """The HTML text of the eval's report.html, from summary.json's contents and the example grids."""
    with warnings.catch_warnings():  # a glyph missing from the font in a user's name is not an error
        warnings.simplefilter("ignore", UserWarning)
        body = [*_header(summary), *_cards(summary), *_win_rates(summary), *_means(summary), *_by_category(summary),
                *_vlm(summary), *_alignment(summary), *_examples(grids), *_counts(summary), _NOT_MEASURED]
    return "\n".join([
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        f"<title>vipo eval: {esc(summary.get('title'))}</title><style>{_STYLE}</style></head><body>",
        *body,
        "</body></html>",
    ])
