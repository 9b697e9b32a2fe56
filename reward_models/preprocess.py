"""Image preprocessing of the reward models, reproduced exactly and in one place.

Each published scorer was trained with one precise pipeline, and a reward model fed pixels prepared
another way scores differently (a 1-pixel crop shift or a crop instead of padding is enough to move
scores). Everything here works on PIL images with PIL's bicubic resize, as torchvision's `Resize` on
PIL images and transformers' PIL image processors do, then `ToTensor` + `Normalize` in float32.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from PIL import Image

OPENAI_CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

CropRounding = Literal["round", "floor"]


def resize_shortest(image: Image.Image, size: int) -> Image.Image:
    """Bicubic resize so the short side is `size`; the long side is truncated like torchvision and
    transformers both do (`int(size * long / short)`)."""
    w, h = image.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    if (new_w, new_h) == (w, h):
        return image
    return image.resize((new_w, new_h), Image.BICUBIC)


def center_crop(image: Image.Image, size: int, rounding: CropRounding = "round") -> Image.Image:
    """Centre crop to `size` x `size`.

    `rounding="round"` is torchvision's `CenterCrop` (OpenAI CLIP, ImageReward, the aesthetic predictor);
    `"floor"` is transformers' `CLIPImageProcessor` (PickScore was published with it). They differ by one
    pixel when the margin is odd.
    """
    w, h = image.size
    if rounding == "round":
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    else:
        top, left = (h - size) // 2, (w - size) // 2
    return image.crop((left, top, left + size, top + size))


def resize_longest_pad(image: Image.Image, size: int, fill: int = 0) -> Image.Image:
    """HPSv2's `ResizeMaxSize`: bicubic resize so the LONG side is `size` (keeping aspect), then pad to
    a `size` x `size` square with `fill`, the extra pixel of an odd padding going right/bottom.

    HPSv2 skips the pad when the long side is already `size`, which would hand a non-square tensor to
    the ViT; here a square is always produced (same pixels wherever HPSv2 works at all).
    """
    w, h = image.size
    scale = size / max(w, h)
    new_w, new_h = round(w * scale), round(h * scale)
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.BICUBIC)
    if (new_w, new_h) == (size, size):
        return image
    canvas = Image.new(image.mode, (size, size), fill if image.mode != "RGB" else (fill,) * 3)
    canvas.paste(image, ((size - new_w) // 2, (size - new_h) // 2))
    return canvas


def to_tensor(images: Sequence[Image.Image], mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Stack same-size RGB PIL images to a normalised float32 (N, 3, H, W) tensor (ToTensor + Normalize)."""
    arr = np.stack([np.asarray(im, dtype=np.uint8) for im in images]).astype(np.float32) / 255.0
    x = torch.from_numpy(arr).permute(0, 3, 1, 2)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


def clip_pixels(
    images: Sequence[Image.Image],
    size: int = 224,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
    rounding: CropRounding = "round",
) -> torch.Tensor:
    """CLIP preprocessing: RGB, resize short side bicubic, centre crop, normalise."""
    return to_tensor([center_crop(resize_shortest(im.convert("RGB"), size), size, rounding) for im in images], mean, std)


def padded_pixels(
    images: Sequence[Image.Image],
    size: int = 224,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
) -> torch.Tensor:
    """HPSv2 preprocessing: RGB, resize longest side bicubic, pad to square with black, normalise."""
    return to_tensor([resize_longest_pad(im.convert("RGB"), size) for im in images], mean, std)
