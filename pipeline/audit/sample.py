"""A small synthetic dataset in the Pick-a-Pic v2 schema, for the README demo and the tests.

    python -m pipeline.audit.sample OUT.parquet [--rows 48] [--seed 0] [--clean]

Images are small generated JPEGs and PNGs (gradients, noise and a coloured box). Unless `--clean`,
some rows are planted bad, at fixed positions (`PLANTED`), so an audit's skip counts are known:
a truncated JPEG, a caption that is null, `label_0 = 0.3`, a PNG header claiming 60000x60000 pixels
(a decompression bomb), bytes that are no image, a null image, and ties (`label_0 = 0.5`).
"""
from __future__ import annotations

import argparse
import struct
import zlib
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.media import encode_image

#: Generators named in `model_0` / `model_1` (Pick-a-Pic v2 spells them as hub ids).
SOURCE_MODELS = ("stabilityai/stable-diffusion-xl-base-1.0", "runwayml/stable-diffusion-v1-5", "dreamlike-art/dreamlike-photoreal-2.0")
#: Planted rows: row index -> the skip reason an audit must give it. Rows 0..11 hold them, so any
#: sample of at least 12 rows has all of them.
PLANTED: dict[int, str] = {
    1: "corrupt_image",  # jpg_0 truncated to a third
    2: "missing_field",  # caption null
    4: "bad_label",  # label_0 = 0.3
    5: "image_too_large",  # jpg_1 = a PNG header claiming 60000x60000
    7: "tie_label",
    8: "corrupt_image",  # jpg_1 = bytes that are no image
    10: "missing_field",  # jpg_0 null
    11: "tie_label",
}

# Pick-a-Pic v2's columns and types (yuvalkirstain/pickapic_v2), image bytes included.
SCHEMA = pa.schema([
    ("are_different", pa.bool_()),
    ("best_image_uid", pa.string()),
    ("caption", pa.string()),
    ("created_at", pa.timestamp("ns")),
    ("has_label", pa.bool_()),
    ("image_0_uid", pa.string()),
    ("image_0_url", pa.string()),
    ("image_1_uid", pa.string()),
    ("image_1_url", pa.string()),
    ("jpg_0", pa.binary()),
    ("jpg_1", pa.binary()),
    ("label_0", pa.float64()),
    ("label_1", pa.float64()),
    ("model_0", pa.string()),
    ("model_1", pa.string()),
    ("ranking_id", pa.int64()),
    ("user_id", pa.int64()),
    ("num_example_per_prompt", pa.int64()),
])

_SUBJECTS = ("a red fox in the snow", "a lighthouse at dusk", "a bowl of ramen, studio light", "an astronaut riding a horse",
             "a watercolor city street", "a robot reading a book", "a neon sign that says 'open'", "a cat wearing a tiny hat")


def bomb_png(width: int = 60000, height: int = 60000) -> bytes:
    """A PNG whose header claims `width x height` RGB pixels (and holds one row of data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * (3 * 64 + 1))) + chunk(b"IEND", b"")


def synthetic_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A colour gradient with noise and one box: varied enough that reward models disagree."""
    y, x = np.mgrid[0:size, 0:size] / max(1, size - 1)
    a, b, c = rng.uniform(-1, 1, (3, 3))
    img = (a * x[..., None] + b * y[..., None] + c + 1) * 0.5 * 255 + rng.normal(0, 18, (size, size, 3))
    x0, y0 = rng.integers(0, size // 2, 2)
    img[y0 : y0 + size // 3, x0 : x0 + size // 3] = rng.uniform(0, 255, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def sample_table(rows: int = 48, seed: int = 0, size: int = 48, planted: bool = True) -> pa.Table:
    """The rows as an arrow table in `SCHEMA`."""
    rng = np.random.default_rng(seed)
    t0 = datetime(2023, 5, 1)
    cols: dict[str, list] = {f.name: [] for f in SCHEMA}
    for i in range(rows):
        fmt = "png" if i % 3 == 2 else "jpg"
        imgs = [encode_image(synthetic_image(rng, size), fmt) for _ in (0, 1)]
        label = float(rng.integers(0, 2))
        caption: str | None = f"{_SUBJECTS[i % len(_SUBJECTS)]}, variation {i}"
        m0, m1 = rng.choice(len(SOURCE_MODELS), 2)
        reason = PLANTED.get(i) if planted else None
        if reason == "corrupt_image" and i == 1:
            imgs[0] = imgs[0][: len(imgs[0]) // 3]
        elif reason == "corrupt_image":
            imgs[1] = b"this is not an image <script>alert(1)</script>"
        elif reason == "missing_field" and i == 2:
            caption = None
        elif reason == "missing_field":
            imgs[0] = None
        elif reason == "bad_label":
            label = 0.3
        elif reason == "image_too_large":
            imgs[1] = bomb_png()
        elif reason == "tie_label":
            label = 0.5
        if i == 3:  # untrusted text reaches the report: it must come out escaped
            caption = "<b>bold</b> & <script>alert('caption')</script> \"quoted\""
        uid = [f"{seed:04d}-{i:06d}-{k}" for k in (0, 1)]
        values = {
            "are_different": True, "best_image_uid": uid[0] if label == 1.0 else uid[1] if label == 0.0 else "",
            "caption": caption, "created_at": t0 + timedelta(minutes=i), "has_label": True,
            "image_0_uid": uid[0], "image_0_url": f"https://example.invalid/{uid[0]}.{fmt}",
            "image_1_uid": uid[1], "image_1_url": f"https://example.invalid/{uid[1]}.{fmt}",
            "jpg_0": imgs[0], "jpg_1": imgs[1], "label_0": label, "label_1": 1.0 - label,
            "model_0": SOURCE_MODELS[m0], "model_1": SOURCE_MODELS[m1], "ranking_id": seed * 1_000_000 + i,
            "user_id": int(rng.integers(1, 50)), "num_example_per_prompt": 1,
        }
        for k, v in values.items():
            cols[k].append(v)
    return pa.table(cols, schema=SCHEMA)


def write_sample(path: str | Path, rows: int = 48, seed: int = 0, size: int = 48, planted: bool = True,
                 row_group_size: int = 16) -> Path:
    """Write `sample_table(...)` to `path` in row groups of `row_group_size`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(sample_table(rows, seed, size, planted), path, row_group_size=row_group_size)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="parquet file to write")
    ap.add_argument("--rows", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=48, help="image side (px)")
    ap.add_argument("--clean", action="store_true", help="plant no bad rows")
    args = ap.parse_args()
    path = write_sample(args.out, args.rows, args.seed, args.size, planted=not args.clean)
    print(f"wrote {args.rows} rows to {path}")


if __name__ == "__main__":
    main()
