"""Pieces shared by vipo's self-contained HTML reports (audit's and eval's report.html).

A report is one file that opens anywhere, offline: plots are inline PNGs and media are JPEG data
URIs, and no script is ever written. Every string that comes from user data (captions, prompts,
model names, file names, error text) is untrusted, so it goes through `esc`, and the `CSP` meta
allows no script and no external fetch, so anything that slipped through could neither run nor
phone home. Media bytes are checked for size from their header before any pixel is decoded.
"""
from __future__ import annotations

import base64
import html
import io
from typing import Any

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:right;white-space:nowrap}
th{background:#f4f4f4}td.l,th.l{text-align:left;white-space:normal}.big{font-size:2rem;font-weight:600}
.cards{display:flex;gap:1rem;flex-wrap:wrap}.card{border:1px solid #ddd;border-radius:6px;padding:.8rem 1rem;min-width:12rem}
img.plot{max-width:100%}
"""


def esc(value: Any) -> str:
    """`value` as HTML text, quotes included (safe in attributes too); None is the empty string."""
    return html.escape("" if value is None else str(value), quote=True)


def _jpeg_uri(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def png_uri(fig) -> str:
    """A matplotlib figure as a PNG data URI; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def table(head: list[str], rows: list[list[Any]], left: int = 1) -> str:
    """An HTML table of escaped cells; the first `left` columns are left-aligned (text), the rest right."""
    th = "".join(f'<th class="{"l" if i < left else ""}">{esc(h)}</th>' for i, h in enumerate(head))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{esc(c)}</td>' for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{th}</tr>{body}</table>"


def _video_frames(data: bytes, n: int, max_pixels: int):
    """`n` evenly spaced frames of a video, refused from its header when over `max_pixels`."""
    from pipeline.media import probe_video, read_video_frames

    info = probe_video(data)
    if info["width"] * info["height"] > max_pixels:
        raise ValueError("video frame over max_pixels")
    return read_video_frames(data, n)


def thumbnail_uri(data: bytes, px: int, max_pixels: int, video: bool = False) -> str | None:
    """A JPEG data URI of at most `px` on the long side (a video's middle frame), or None when the
    bytes do not decode."""
    from PIL import Image

    from pipeline.media import decode_image

    try:
        if video:
            frames = _video_frames(data, 3, max_pixels)
            img = Image.fromarray(frames[len(frames) // 2])
        else:
            img = decode_image(data, max_pixels=max_pixels)
    except Exception:
        return None
    img.thumbnail((px, px))
    return _jpeg_uri(img)


def frame_strip_uris(data: bytes, n: int, px: int, max_pixels: int) -> list[str]:
    """`n` evenly spaced frames of an encoded video as JPEG data URIs of at most `px` on the long
    side (repeats when the clip is shorter), or [] when the bytes do not decode or are too large."""
    from PIL import Image

    if n < 1:
        return []
    try:
        frames = _video_frames(data, n, max_pixels)
    except Exception:
        return []
    out = []
    for arr in frames:
        img = Image.fromarray(arr)
        img.thumbnail((px, px))
        out.append(_jpeg_uri(img))
    return out
