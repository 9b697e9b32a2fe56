"""Input preprocessing of the reward models, each step in the order its reference code runs it.

A scorer fed pixels or tokens prepared another way scores differently (a 1-pixel crop shift, resizing
before instead of after the RGB conversion, or an unescaped `&amp;` is enough to move a score), so
every rule here is the reference's, transcribed:

* `clip_pixels` is OpenAI CLIP's `_transform` (`clip/clip.py`), which ImageReward (`ImageReward.py`),
  the LAION aesthetic predictor (`simple_inference.py`: `clip.load("ViT-L/14")`) and CLIPScore
  (jmhessel/clipscore `clipscore.py`) all use: PIL bicubic resize of the short side, centre crop with
  the offset rounded, and only THEN RGB, `ToTensor`, `Normalize`. The order matters for images with
  alpha (PIL resizes RGBA/LA premultiplied) and for palette images (PIL resizes mode "P" nearest).
* `hps_pixels` is HPSv2's `image_transform(resize_longest_max=True)` (`hpsv2/src/open_clip/transform.py`):
  RGB, `ToTensor`, then `ResizeMaxSize` on the FLOAT tensor (torchvision bicubic, antialiased), zero
  padding to a square, `Normalize`.
* `openai_clip_clean` is OpenAI CLIP's `basic_clean` + `whitespace_clean` + lower case
  (`clip/simple_tokenizer.py`), applied before tokenising by the scorers whose reference calls
  `clip.tokenize`; transformers 5's CLIP tokenizers do none of it (no ftfy, no HTML unescaping).

PickScore's pixels are the slow (PIL) CLIP image processor of transformers, see `pickscore.py`.
"""
from __future__ import annotations

import html
from collections.abc import Sequence

import ftfy
import numpy as np
import regex
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

OPENAI_CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


# ---- pixels ---------------------------------------------------------------------------------------
def resize_shortest(image: Image.Image, size: int) -> Image.Image:
    """PIL bicubic resize so the short side is `size`, in the image's own mode (torchvision's `Resize(size)`
    on a PIL image); the long side is truncated, `int(size * long / short)`, as torchvision does."""
    w, h = image.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    if (new_w, new_h) == (w, h):
        return image
    return image.resize((new_w, new_h), Image.BICUBIC)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """torchvision's `CenterCrop(size)`: offsets `int(round(margin / 2))` (transformers' processors floor them)."""
    w, h = image.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def unit_tensor(image: Image.Image) -> torch.Tensor:
    """torchvision's `ToTensor` of an RGB image: float32 (3, H, W) in [0, 1]."""
    arr = np.asarray(image, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image, got mode {image.mode!r} with array shape {arr.shape}")
    return torch.from_numpy(arr.astype(np.float32) / 255.0).permute(2, 0, 1)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """torchvision's `Normalize` on a (..., 3, H, W) float tensor."""
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - m) / s


def clip_pixels(
    images: Sequence[Image.Image], size: int = 224, mean: Sequence[float] = OPENAI_CLIP_MEAN, std: Sequence[float] = OPENAI_CLIP_STD
) -> torch.Tensor:
    """OpenAI CLIP's `_transform`: resize short side, centre crop, RGB (after resizing), normalise -> (N, 3, size, size)."""
    tiles = [unit_tensor(center_crop(resize_shortest(im, size), size).convert("RGB")) for im in images]
    return normalize(torch.stack(tiles), mean, std)


def resize_longest_pad(x: torch.Tensor, size: int) -> torch.Tensor:
    """HPSv2's `ResizeMaxSize` on a float (C, H, W) tensor: bicubic antialiased resize so the LONG side is
    `size` (new sides `round(side * size / long)`), then zero padding, the odd pixel going right/bottom.

    HPSv2 skips the padding too when the long side is already `size`, which hands its ViT a non-square
    tensor it cannot take; here a square always comes out (the same pixels wherever HPSv2 works at all)."""
    h, w = x.shape[-2:]
    scale = size / float(max(h, w))
    new_h, new_w = round(h * scale), round(w * scale)
    if (new_h, new_w) != (h, w):
        # antialias=True is torchvision's default for tensors since 0.17, so what `hpsv2` runs today
        x = TF.resize(x, [new_h, new_w], InterpolationMode.BICUBIC, antialias=True)
    pad_h, pad_w = size - new_h, size - new_w
    if pad_h or pad_w:
        x = TF.pad(x, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
    return x


def hps_pixels(
    images: Sequence[Image.Image], size: int = 224, mean: Sequence[float] = OPENAI_CLIP_MEAN, std: Sequence[float] = OPENAI_CLIP_STD
) -> torch.Tensor:
    """HPSv2's eval transform: RGB, `ToTensor`, resize the float tensor's long side + pad, normalise.

    HPSv2 keeps an RGBA image's alpha as a 4th channel (`_convert_to_rgb_or_rgba`, `MaskAwareNormalize`)
    that its 3-channel ViT cannot take; every step is per channel, so dropping alpha first gives exactly
    the reference tensor's three colour channels."""
    return normalize(torch.stack([resize_longest_pad(unit_tensor(im.convert("RGB")), size) for im in images]), mean, std)


# ---- text -------------------------------------------------------------------------------------------
def openai_clip_clean(text: str) -> str:
    """What `clip.tokenize` does to a prompt before BPE: `basic_clean` (ftfy, HTML unescaped twice, strip),
    `whitespace_clean` (runs of white space -> one space, strip), lower case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()
