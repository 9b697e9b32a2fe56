"""Joint resize / crop / flip of a preference pair, and the conversion to the model's [-1, 1] range.

Winner and loser go through the *same* geometry (one crop position, one flip draw): a crop that
cut the winner's subject but not the loser's would make the pair disagree with its label.
Randomness comes from a generator seeded by the pair's identity and the epoch, so a pair looks the
same after a resume as it would have without one, whatever the stream position.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def pair_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    """The generator of one pair's augmentation in one epoch (a new crop each epoch, same after resume)."""
    digest = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, digest])


def to_tensor(frames: np.ndarray) -> Tensor:
    """uint8 (H, W, 3) or (T, H, W, 3) -> float32 (3, H, W) or (3, T, H, W) in [-1, 1]."""
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 (H, W, 3) or (T, H, W, 3) pixels, got {frames.dtype} {frames.shape}")
    t = torch.from_numpy(frames.astype(np.float32)).div_(127.5).sub_(1.0)  # astype copies: PIL arrays are read-only
    return t.permute(2, 0, 1) if t.ndim == 3 else t.permute(3, 0, 1, 2)


def _resize_short_side(x: Tensor, size: int) -> Tensor:
    """Resize (3, H, W) or (3, T, H, W) so that the short side is `size` (antialiased bilinear)."""
    h, w = x.shape[-2:]
    if min(h, w) == size:
        return x
    scale = size / min(h, w)
    new_hw = (max(size, round(h * scale)), max(size, round(w * scale)))
    planes = x.reshape(-1, 1, h, w) if x.ndim == 3 else x.permute(1, 0, 2, 3)  # (C,1,H,W) or (T,C,H,W)
    out = F.interpolate(planes, size=new_hw, mode="bilinear", antialias=True, align_corners=False).clamp_(-1.0, 1.0)
    return out.reshape(3, *new_hw) if x.ndim == 3 else out.permute(1, 0, 2, 3)


def _crop_corner(h: int, w: int, size: int, u: float, v: float) -> tuple[int, int]:
    """(top, left) of the size x size window at relative position (u, v) in [0, 1] of the free space."""
    return round(v * (h - size)), round(u * (w - size))


def joint_transform(
    win: Tensor, lose: Tensor, *, size: int, random_crop: bool, random_flip: bool, rng: np.random.Generator
) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """Resize both short sides to `size`, cut one square window, flip both or neither.

    One crop position and one flip draw serve both. When the two differ in size after resizing
    (generators with different aspect ratios), the window sits at the same *relative* position in
    each; for equal sizes that is the same box, pixel for pixel. Also returns the winner's crop
    corner (top, left) in its resized image as fed (mirrored when flipped: the corner of the same
    pixels cut from the flipped image, as diffusers' SDXL scripts flip before they crop).
    """
    u, v = (float(rng.random()), float(rng.random())) if random_crop else (0.5, 0.5)
    flip = bool(rng.random() < 0.5) if random_flip else False
    out, corners = [], []
    for x in (win, lose):
        x = _resize_short_side(x, size)
        h, w = x.shape[-2:]
        top, left = _crop_corner(h, w, size, u, v)
        x = x[..., top : top + size, left : left + size]
        corners.append((top, (w - size - left) if flip else left))
        out.append((x.flip(-1) if flip else x).contiguous())
    return out[0], out[1], corners[0]
