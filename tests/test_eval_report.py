"""The eval's report.html from a synthetic summary: hostile prompts and names only ever escaped, no
script and the no-fetch CSP, the plots there are data for (and none where there is not), hand-picked
numbers formatted as documented, media helpers that refuse what they should, and a page that renders
in headless Chromium with nothing on its console."""
from __future__ import annotations

import base64
import html
import io
import re

import numpy as np
import pytest
from PIL import Image

from pipeline.eval.report import interval, p_value, render_report
from pipeline.html_report import CSP, frame_strip_uris, thumbnail_uri
from pipeline.media import encode_image, encode_video
from tests.browser import screenshot

HOSTILE_PROMPT = "<script>alert(1)</script>\"'&"
BASE = "base-sd15"
EVIL = "lora <b>v2</b> $\\frac{$"  # HTML and an unparsable matplotlib mathtext
SFT = "sft"
CATEGORIES = ["aesthetics", "motion_quality", "people & <pets>"]
REWARDS = ["pickscore", "hpsv21", "imagereward", "clipscore", "aesthetic"]
METRICS = [*REWARDS, "temporal_flicker"]
MAX_PIXELS = 64_000_000


def _iv(rng, centre: float, spread: float, n: int = 24) -> dict:
    e = centre + rng.normal(0, spread)
    return {"estimate": e, "low": e - spread, "high": e + spread, "n": n}


def _comparison(rng) -> dict:
    wins, losses = int(rng.integers(5, 20)), int(rng.integers(5, 20))
    return {"win_rate": _iv(rng, 0.55, 0.08), "wins": wins, "losses": losses, "ties": 1,
            "sign_test_p": float(rng.uniform(0.01, 0.9)), "mean_difference": _iv(rng, 0.01, 0.02), "significant": False}


def _vlm(rng) -> dict:
    return {"win_rate": _iv(rng, 0.6, 0.1), "wins": 14, "losses": 9, "ties": 1, "sign_test_p": 0.41,
            "p_candidate": _iv(rng, 0.58, 0.05), "position_consistency": 0.875, "significant": False}


def _scoped(fn) -> dict:
    return {"overall": fn(), "by_category": {c: fn() for c in CATEGORIES}}


def _summary() -> dict:
    rng = np.random.default_rng(0)
    models = [BASE, EVIL, SFT]
    comparisons = {c: {**_scoped(lambda: {m: _comparison(rng) for m in METRICS}), "vlm": None} for c in (EVIL, SFT)}
    comparisons[EVIL]["vlm"] = _scoped(lambda: _vlm(rng))
    s = {
        "title": "eval <i>title</i>", "output_dir": "/tmp/out/<dir>", "created": "2025-01-02T03:04:05Z",
        "prompts": {"source": "file", "detail": f"prompt files: {HOSTILE_PROMPT}.txt",
                    "per_category": {c: 8 for c in CATEGORIES}, "seeds_per_prompt": 3},
        "bootstrap": {"resamples": 1000, "confidence": 0.95, "unit": "prompt"},
        "base": {"name": BASE, "generator": "tiny-sd15", "model": "tiny", "weights": None},
        "candidates": [{"name": EVIL, "generator": "tiny-sd15", "model": "tiny", "weights": "/w/<lora>.safetensors"},
                       {"name": SFT, "generator": "tiny-sd15", "model": "tiny", "weights": "/w/sft"}],
        "metrics": METRICS, "descriptive_metrics": ["dynamic_degree"],
        "higher_is_better": {m: True for m in METRICS}, "categories": CATEGORIES,
        "means": {m: _scoped(lambda: {k: _iv(rng, 5.0, 0.3) for k in [*METRICS, "dynamic_degree"]}) for m in models},
        "comparisons": comparisons,
        "alignment": {m: _scoped(lambda: _iv(rng, 0.8, 0.03)) for m in models},
        "counts": {m: {"candidates": 72, "generated": 71, "scored": 70, "failed": {"oom <x>": 1, "nsfw": 1}} for m in models},
        "vlm_rater": "transformers:<qwen>",
    }
    # hand-picked numbers the tables must show exactly so
    pick = comparisons[EVIL]["overall"]["pickscore"]
    pick.update(win_rate={"estimate": 0.625, "low": 0.55, "high": 0.7, "n": 24}, sign_test_p=3.2e-05, significant=True,
                mean_difference={"estimate": 0.0123, "low": 0.0051, "high": 0.0199, "n": 24})
    comparisons[SFT]["overall"]["pickscore"]["sign_test_p"] = 0.41
    s["means"][BASE]["overall"]["pickscore"] = {"estimate": 21.3456, "low": 21.1, "high": 21.6, "n": 24}
    s["alignment"][SFT]["overall"] = {"estimate": 0.8123, "low": 0.79, "high": 0.834, "n": 24}
    # no data: a whole category of one candidate, and one mean
    for m in METRICS:
        comparisons[SFT]["by_category"]["motion_quality"][m]["win_rate"] = {"estimate": None, "low": None, "high": None, "n": 0}
        comparisons[SFT]["by_category"]["motion_quality"][m]["mean_difference"] = {"estimate": None, "low": None, "high": None, "n": 0}
        comparisons[SFT]["by_category"]["motion_quality"][m]["sign_test_p"] = None
    s["means"][SFT]["by_category"]["aesthetics"]["temporal_flicker"] = {"estimate": None, "low": None, "high": None, "n": 0}
    return s


def _video() -> bytes:
    t = np.linspace(0, 255, 8, dtype=np.uint8)
    frames = np.zeros((8, 48, 64, 3), np.uint8)
    frames[..., 0] = t[:, None, None]
    frames[..., 1] = np.random.default_rng(1).integers(0, 255, (48, 64), dtype=np.uint8)
    return encode_video(frames, fps=8)


def _image(seed: int) -> bytes:
    return encode_image(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def grids() -> list[dict]:
    video = _video()
    scores = {m: 0.5 + i / 10 for i, m in enumerate(METRICS)}
    video_cells = [{"model": name, "poster": thumbnail_uri(video, 128, MAX_PIXELS, video=True),
                    "frames": frame_strip_uris(video, 4, 64, MAX_PIXELS), "scores": scores} for name in (BASE, EVIL, SFT)]
    image_cells = [{"model": BASE, "poster": thumbnail_uri(_image(2), 128, MAX_PIXELS), "frames": [],
                    "scores": {**{m: 0.25 for m in REWARDS}, "temporal_flicker": None}},
                   {"model": EVIL, "poster": "javascript:alert(1)", "frames": [], "scores": {"pickscore": 21.5}},
                   {"model": SFT, "poster": None, "frames": [], "scores": {}}]
    return [{"prompt": "a fox runs through snow", "category": "motion_quality", "modality": "video", "seed": 7, "cells": video_cells},
            {"prompt": HOSTILE_PROMPT, "category": "people & <pets>", "modality": "image", "seed": 3, "cells": image_cells}]


@pytest.fixture(scope="module")
def page(grids) -> str:
    return render_report(_summary(), grids)


def _decode(uri: str) -> Image.Image:
    assert uri.startswith("data:image/jpeg;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def test_frame_strip_is_n_small_frames_and_refuses_what_it_should():
    video = _video()
    strip = frame_strip_uris(video, 4, 32, MAX_PIXELS)
    assert len(strip) == 4 and len(set(strip)) == 4  # evenly spaced over a red ramp: four different frames
    assert all(max(_decode(u).size) <= 32 for u in strip)
    assert frame_strip_uris(video, 3, 32, max_pixels=48 * 64 - 1) == []  # refused from the header
    assert frame_strip_uris(b"\x00\x00\x00\x18ftypmp42 truncated", 3, 32, MAX_PIXELS) == []
    assert thumbnail_uri(video, 32, 48 * 64 - 1, video=True) is None


def test_hostile_strings_appear_only_escaped(page):
    assert "<script" not in page.lower() and "javascript:" not in page
    assert HOSTILE_PROMPT not in page and html.escape(HOSTILE_PROMPT) in page
    assert "<b>v2</b>" not in page and page.count(html.escape(EVIL)) >= 10
    for raw in ("<i>title</i>", "<dir>", "<pets>", "<lora>", "<qwen>", "oom <x>"):
        assert raw not in page and html.escape(raw) in page
    assert f'<meta http-equiv="Content-Security-Policy" content="{CSP}">' in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)


def test_the_page_has_its_sections_and_plots(page):
    assert page.count("data:image/png;base64,") == 3  # forest plot + one by-category chart per candidate
    heads = re.findall(r"<h2>(.*?)</h2>", page)
    assert [re.sub(r" \(\d+\)$", "", h) for h in heads] == ["Win rates against the base", "Means", "By category", "VLM rater",
                                                 "Alignment (VQAScore)", "Examples", "Counts", "What is not measured"]
    assert page.count('class="card"') == 2 and page.count('class="grid"') == 2
    assert page.count('class="frame"') == 12 and page.count('class="poster"') == 4  # 3 video posters, 1 image
    assert "(no preview)" in page and "GenEval" in page and "DPG-Bench" in page
    assert "<h3>dynamic_degree <small>(descriptive, not ranked)</small></h3>" in page


def test_hand_picked_numbers(page):
    def td(text: str) -> str:
        return f'<td class="">{html.escape(text)}</td>'

    assert td("62.5% [55.0%, 70.0%]") in page and td("3.2e-05") in page and td("0.41") in page
    assert td("+0.0123 [+0.0051, +0.0199]") in page
    assert td("21.3456 [21.1000, 21.6000]") in page
    assert td("0.812 [0.790, 0.834]") in page and td("87.5%") in page
    assert '<div class="big">62.5%</div>[55.0%, 70.0%]' in page and '<span class="sig">significant</span> (sign test p = 3.2e-05)' in page
    assert td("oom <x>: 1, nsfw: 1") in page
    assert td("n/a") in page
    assert (p_value(None), p_value(1.0), p_value(0.0012), p_value(1e-3)) == ("n/a", "1", "0.0012", "0.001")
    assert interval({"estimate": 0.5, "low": None, "high": None, "n": 1}) == "50.0% [n/a]"
    assert interval(None) == interval({"estimate": None, "low": None, "high": None, "n": 0}) == "n/a"


def test_missing_data_leaves_plots_out_without_crashing(grids):
    s = _summary()
    for comp in s["comparisons"].values():
        for scope in [comp["overall"], *comp["by_category"].values()]:
            for c in scope.values():
                c["win_rate"] = {"estimate": None, "low": None, "high": None, "n": 0}
        comp["vlm"] = None
    s["alignment"] = None
    page = render_report(s, [])
    assert "data:image/png;base64," not in page
    assert "<h2>VLM rater" not in page and "<h2>Alignment" not in page and "<h2>Examples" not in page
    assert '<div class="big">n/a</div>' in page
    bare = {**s, "metrics": [], "descriptive_metrics": [], "candidates": [], "comparisons": {}, "means": {}, "counts": {}}
    assert "<h2>Counts</h2>" in render_report(bare, grids)


def test_report_renders_in_headless_chromium(page, tmp_path):
    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")
    console, img = screenshot(path, tmp_path)
    assert console == []
    assert img.shape[:2] == (2000, 1200)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50 and img.std() > 10  # text and plots, not blank
