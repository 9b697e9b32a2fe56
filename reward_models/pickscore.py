"""PickScore (Kirstain et al., 2023): a CLIP ViT-H/14 fine-tuned on Pick-a-Pic human preferences.

Published as `yuvalkirstain/PickScore_v1` (weights only) with the processor of
`laion/CLIP-ViT-H-14-laion2B-s32B-b79K`; the score is the CLIP logit, `logit_scale.exp() * cos`,
typically ~18-24 for real images.
"""
from __future__ import annotations

import torch
from PIL import Image

from .clipscore import HFCLIPRewardModel


class PickScore(HFCLIPRewardModel):
    name = "pickscore"
    default_processor = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
    crop_rounding = "floor"  # PickScore was published with transformers' CLIPImageProcessor

    def _score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        return self.model.logit_scale.float().exp() * self.cosine(images, prompts)
