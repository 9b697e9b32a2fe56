"""The dataset card (`card/README.md`, Hugging Face dataset-card style) and its plots (`card/plots/*.png`):
what is in the data, how far the raters agree, and the exact config that made it.

Plots are drawn on a bare Agg canvas (no pyplot, no global backend switch) under matplotlib's default
style, at a fixed size and dpi, with no Software/date metadata, so the same tables give the same PNG bytes
on every run, whatever the user's matplotlibrc says.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from pipeline.agreement import vote_agreement
from pipeline.store import write_bytes
from schemas.categories import CATEGORIES
from schemas.config import BuildConfig
from schemas.shard import DATASET_VERSION
from schemas.tables import VIDEO_METRIC_NAMES

CARD_DIR, PLOTS_DIR = "card", "plots"  # card/README.md references card/plots/*.png as plots/*.png
VLM_RATER = "vlm"  # the VLM rater's row/column in the agreement matrix
DPI = 100
_WIN, _LOSE = "#2a9d55", "#d1495b"


@dataclass(frozen=True)
class Agreement:
    """Pairwise agreement of raters on formed pairs: `share[i, j]` of the pairs both rated decisively on
    which rater i and rater j prefer the same candidate (NaN where no pair was rated by both), and `pairs[i, j]`
    that denominator."""

    raters: list[str]
    share: np.ndarray
    pairs: np.ndarray


def _sign(values: np.ndarray) -> np.ndarray:
    """+1 / -1 / 0 (ties and NaN) as int8."""
    return np.sign(np.nan_to_num(values.astype(np.float64))).astype(np.int8)


def agreement_matrix(pairs: pa.Table, scorers: list[str], judgements: pa.Table | None = None) -> Agreement:
    """Agreement between the reward models (and the VLM rater, when `judgements` has any of these pairs)
    over ALL formed pairs, kept or dropped: on the selected ones the quorum makes it trivially high.

    A reward model prefers the pair's winner when its margin (winner minus loser) is > 0, the loser when
    < 0, and neither on a tie or a missing score; the VLM prefers the winner when its swap-debiased
    P(winner) > 0.5, the loser when < 0.5. A rater preferring neither does not count for that pair."""
    prefs = [_sign(pairs[f"margin_{s}"].to_numpy(zero_copy_only=False)) for s in scorers]
    raters = list(scorers)
    if judgements is not None and judgements.num_rows:
        at = pc.index_in(pairs["pair_id"], value_set=judgements["pair_id"])
        if at.null_count < len(at):
            p = judgements["p_winner"].take(at).to_numpy(zero_copy_only=False).astype(np.float64)
            prefs.append(_sign(p - 0.5))  # unjudged pairs (null -> NaN -> 0) do not count
            raters.append(VLM_RATER)
    share, both = vote_agreement(np.stack(prefs, axis=1))
    return Agreement(raters, share, both)


def side_scores(selected: pa.Table, scores: pa.Table, columns: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per score column with any value: (winner scores, loser scores) of the selected pairs, NaN dropped."""
    out = {}
    at = {side: pc.index_in(selected[f"{side}_id"], value_set=scores["candidate_id"]) for side in ("winner", "loser")}
    for col in columns:
        values = [scores[col].take(at[side]).to_numpy(zero_copy_only=False).astype(np.float64) for side in ("winner", "loser")]
        win, lose = (v[~np.isnan(v)] for v in values)
        if len(win) or len(lose):
            out[col] = (win, lose)
    return out


def _canvas(nrows: int, ncols: int, width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _style():
    import matplotlib.style

    return matplotlib.style.context("default")  # the user's matplotlibrc must not change the bytes


def _bins(*arrays: np.ndarray) -> np.ndarray:
    values = np.concatenate(arrays)
    lo, hi = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, int(np.clip(np.sqrt(len(values)), 5, 40)) + 1)


def _grid(n: int, ncols: int = 3) -> tuple[int, int]:
    ncols = min(ncols, n)
    return -(-n // ncols), ncols


def plot_scores(title: str, scores: dict[str, tuple[np.ndarray, np.ndarray]]) -> bytes:
    """One histogram per score column, winners over losers."""
    nrows, ncols = _grid(len(scores))
    with _style():
        fig, axes = _canvas(nrows, ncols, 4.0 * ncols, 2.8 * nrows + 0.5)
        for ax, (col, (win, lose)) in zip(axes.flat, scores.items()):
            bins = _bins(win, lose)
            # winners filled, losers outlined: both stay visible where they share bins
            ax.hist(win, bins=bins, color=_WIN, alpha=0.45, label=f"winner (n={len(win)})")
            ax.hist(lose, bins=bins, histtype="step", linewidth=1.8, color=_LOSE, label=f"loser (n={len(lose)})")
            ax.set_title(col)
            ax.set_ylabel("pairs")
            ax.locator_params(axis="x", nbins=5)  # long tick labels (-0.325) must not run into each other
            ax.legend(fontsize="small")
        for ax in list(axes.flat)[len(scores):]:
            ax.set_axis_off()
        fig.suptitle(title)
        return _png(fig)


def plot_margins(title: str, margins: dict[str, np.ndarray]) -> bytes:
    """One histogram per scorer of the selected pairs' margins (winner minus loser, raw score units)."""
    nrows, ncols = _grid(len(margins))
    with _style():
        fig, axes = _canvas(nrows, ncols, 4.0 * ncols, 2.8 * nrows + 0.5)
        for ax, (scorer, values) in zip(axes.flat, margins.items()):
            ax.hist(values, bins=_bins(values, np.zeros(1)), color="#3b6ea5")  # the range includes 0, marked
            ax.axvline(0.0, color="black", linewidth=0.8)
            ax.set_title(f"{scorer} (n={len(values)})")
            ax.set_ylabel("pairs")
            ax.locator_params(axis="x", nbins=5)
        for ax in list(axes.flat)[len(margins):]:
            ax.set_axis_off()
        fig.suptitle(title)
        return _png(fig)


def plot_agreement(title: str, agreement: Agreement) -> bytes:
    """The agreement matrix as an annotated heatmap (blank where no pair was rated by both)."""
    k = len(agreement.raters)
    with _style():
        fig, axes = _canvas(1, 1, 1.1 * k + 2.6, 1.0 * k + 1.4)
        ax = axes[0, 0]
        image = ax.imshow(np.ma.masked_invalid(agreement.share), vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_xticks(range(k), agreement.raters, rotation=30, ha="right")
        ax.set_yticks(range(k), agreement.raters)
        for i in range(k):
            for j in range(k):
                v = agreement.share[i, j]
                if not np.isnan(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="black" if v > 0.6 else "white")
        fig.colorbar(image, ax=ax, label="share of pairs with the same preference")
        ax.set_title(title, fontsize="medium")
        return _png(fig)


def plot_generator_share(shares: dict[str, dict[str, int]], cap: float | None) -> bytes:
    """Per category, the share of its selected pairs each winner generator won (stacked bars)."""
    cats = list(shares)
    gens = sorted({g for counts in shares.values() for g in counts})
    with _style():
        fig, axes = _canvas(1, 1, 9.0, 0.5 * len(cats) + 1.8)
        ax = axes[0, 0]
        left = np.zeros(len(cats))
        colors = [f"C{i % 10}" for i in range(len(gens))]
        for gen, color in zip(gens, colors):
            frac = np.array([shares[c].get(gen, 0) / max(1, sum(shares[c].values())) for c in cats])
            ax.barh(cats, frac, left=left, color=color, label=gen)
            left += frac
        if cap is not None:
            ax.axvline(cap, color="black", linestyle="--", linewidth=1.0, label=f"cap {cap:g}")
        ax.set_xlim(0.0, 1.0)
        ax.invert_yaxis()
        ax.set_xlabel("share of the category's selected pairs won")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
        ax.set_title("Winner generator per category")
        return _png(fig)


def _table(header: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _agreement_table(agreement: Agreement) -> str:
    rows = [(r, *("–" if np.isnan(v) else f"{v:.3f}" for v in agreement.share[i])) for i, r in enumerate(agreement.raters)]
    return _table(("", *agreement.raters), rows)


def _cap(cfg: BuildConfig) -> float | None:
    """selection.max_winner_generator_share, when this version of the config has it."""
    return getattr(getattr(cfg, "selection", None), "max_winner_generator_share", None)


def _image(alt: str, name: str) -> str:
    return f"![{alt}]({PLOTS_DIR}/{name})"


def build_card(
    cfg: BuildConfig,
    manifests: dict[str, dict],
    selected: pa.Table,
    *,
    scores: pa.Table | None = None,
    pairs: pa.Table | None = None,
    judgements: pa.Table | None = None,
) -> tuple[str, dict[str, bytes]]:
    """The card's markdown and its plots (file name -> PNG bytes). Plots that need a table not given are left out."""
    front = {
        "pretty_name": cfg.name,
        "tags": ["preference", "dpo", "text-to-image", "text-to-video", "vipo"],
        "configs": [
            {"config_name": m, "data_files": [{"split": man["split"], "path": f"shards/{m}/{man['split']}-*.tar"}]}
            for m, man in sorted(manifests.items())
        ],
    }
    quotas = {c: q.quota for c, q in cfg.categories.items()}
    counts = {}
    for man in manifests.values():
        counts.update(man["categories"])
    plots: dict[str, bytes] = {}
    parts = [
        "---\n" + yaml.safe_dump(front, sort_keys=False) + "---",
        f"# {cfg.name}",
        f"A visual preference dataset built with vipo ({DATASET_VERSION}): candidates from open generators, "
        f"scored by {len(cfg.scorer_names)} reward models ({', '.join(cfg.scorer_names)}); a pair is kept only "
        f"when at least {cfg.quorum} of them prefer the same winner"
        + (", and the VLM rater agrees." if cfg.judge is not None else "."),
        "## Pairs per category",
        _table(
            ("category", "modality", "pairs", "quota"),
            [(c, CATEGORIES[c].modality, counts.get(c, 0), quotas[c]) for c in cfg.categories],
        ),
    ]
    shares = {c: g for man in manifests.values() for c, g in sorted(man.get("winner_generators_by_category", {}).items())}
    if shares:
        cap = _cap(cfg)
        plots["winner-generators.png"] = plot_generator_share(shares, cap)
        parts += [
            "## Winner generator per category",
            "Share of each category's selected pairs won by each generator"
            + (f" (cap: {cap:g})." if cap is not None else "."),
            _image("winner generator share per category", "winner-generators.png"),
            _table(("category", "generator", "wins", "share"),
                   [(c, g, n, f"{n / sum(gs.values()):.3f}") for c, gs in shares.items() for g, n in sorted(gs.items())]),
        ]
    for modality, man in sorted(manifests.items()):
        parts += [
            f"## {modality}: winner generators",
            _table(("generator", "wins"), sorted(man["winner_generators"].items())),
            f"## {modality}: reward-model agreement on the selected pairs",
            _table(("models agreeing", "pairs"), sorted(man["agreement"].items())),
        ]
        mine = selected.filter(pc.equal(selected["modality"], modality))
        if scores is not None:
            columns = [c for c in scores.column_names if c in set(cfg.scorer_names) or c in _video_metrics(modality)]
            name, by_column = f"{modality}-scores.png", side_scores(mine, scores, columns)
        if scores is not None and by_column:
            plots[name] = plot_scores(f"{modality}: scores of the selected pairs", by_column)
            parts += [f"## {modality}: score distributions", "Winner and loser scores of the selected pairs, per scorer.",
                      _image(f"{modality} score distributions, winner vs loser", name)]
        name, margins = f"{modality}-margins.png", {s: _finite(mine[f"margin_{s}"]) for s in cfg.scorer_names}
        if mine.num_rows:
            plots[name] = plot_margins(f"{modality}: margins of the selected pairs (winner minus loser)", margins)
            parts += [f"## {modality}: margin distributions", "Winner minus loser score of the selected pairs, per reward model.",
                      _image(f"{modality} margin distributions", name)]
        formed = pairs.filter(pc.equal(pairs["modality"], modality)) if pairs is not None else None
        if formed is not None and formed.num_rows:
            agreement = agreement_matrix(formed, cfg.scorer_names, judgements)
            name = f"{modality}-agreement.png"
            plots[name] = plot_agreement(f"{modality}: agreement on {formed.num_rows} formed pairs", agreement)
            parts += [
                f"## {modality}: rater agreement",
                f"Share of the {formed.num_rows} formed pairs (kept or dropped) on which two raters prefer the same "
                "candidate, among the pairs both rate decisively (no tie"
                + (f"; the `{VLM_RATER}` row covers the pairs it judged" if VLM_RATER in agreement.raters else "") + ").",
                _image(f"{modality} rater agreement matrix", name),
                _agreement_table(agreement),
            ]
        parts += [
            f"## {modality}: shards",
            _table(("shard", "samples", "sha256"), [(s["name"], s["samples"], s["sha256"][:16]) for s in man["shards"]]),
        ]
    parts += [
        "## Format",
        ("One WebDataset sample per pair, `__key__` = pair_id, members `json`, `txt`, `win.<ext>`, `lose.<ext>`; "
         "each shard has a sidecar parquet with its rows, each folder a `manifest.json`. See vipo's docs/dataset_format.md."),
        "## Config",
        "```yaml\n" + yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False) + "```",
    ]
    return "\n\n".join(parts) + "\n", plots


def _finite(column: pa.ChunkedArray) -> np.ndarray:
    values = column.to_numpy(zero_copy_only=False).astype(np.float64)
    return values[np.isfinite(values)]


def _video_metrics(modality: str) -> tuple[str, ...]:
    return VIDEO_METRIC_NAMES if modality == "video" else ()


def render_card(cfg: BuildConfig, manifests: dict[str, dict], selected: pa.Table, **tables: pa.Table | None) -> str:
    """The card's markdown alone (see `build_card`)."""
    return build_card(cfg, manifests, selected, **tables)[0]


def write_card(
    out_dir: Path,
    cfg: BuildConfig,
    manifests: dict[str, dict],
    selected: pa.Table,
    *,
    scores: pa.Table | None = None,
    pairs: pa.Table | None = None,
    judgements: pa.Table | None = None,
) -> Path:
    """Write card/README.md and card/plots/*.png (atomically, stale plots removed); returns the README path.

    `scores`: the scores table (score distributions); `pairs`: all formed pairs with their margins
    (agreement matrix); `judgements`: the VLM's (its row in the matrix)."""
    from pipeline.study.card import study_section

    text, plots = build_card(cfg, manifests, selected, scores=scores, pairs=pairs, judgements=judgements)
    section = study_section(out_dir)  # a human study inside the build folder keeps its figures in the card
    text = text.rstrip("\n") + "\n\n" + section if section else text
    folder = Path(out_dir) / CARD_DIR
    for name, data in sorted(plots.items()):
        write_bytes(folder / PLOTS_DIR / name, data)
    for stale in (folder / PLOTS_DIR).glob("*.png"):
        if stale.name not in plots:
            stale.unlink()
    return write_bytes(folder / "README.md", text.encode("utf-8"))


def write_card_from_tables(out_dir: Path, cfg: BuildConfig, manifests: dict[str, dict], tables: dict, scorers: list[str]) -> Path:
    """`write_card` reading its inputs from the build's tables (only the columns the card uses)."""
    selected = tables["selected"].read([c for c in tables["selected"].schema.names if not c.endswith("_record")])
    pairs = tables["pairs"].read(["pair_id", "modality", *(f"margin_{s}" for s in scorers)])
    judgements = tables["judgements"].read(["pair_id", "p_winner"]) if "judgements" in tables else None
    return write_card(out_dir, cfg, manifests, selected, scores=tables["scores"].read(), pairs=pairs, judgements=judgements)
