"""PickScore (Kirstain et al., 2023): a CLIP ViT-H/14 fine-tuned on Pick-a-Pic human preferences.

Published as `yuvalkirstain/PickScore_v1` (weights only) with the processor of
`laion/CLIP-ViT-H-14-laion2B-s32B-b79K`; the score is the CLIP logit, `logit_scale.exp() * cos`,
typically ~18-24 for real images.

Inputs as PickScore's trainer prepared them (`trainer/datasetss/clip_hf_dataset.py`, transformers 4.27.3):
`image.convert("RGB")`, then the slow (PIL) `CLIPImageProcessor` of that processor folder, pinned here
because transformers 5's default CLIP processor is the torchvision one (pixels up to 0.03 apart); text
through `AutoProcessor`'s tokenizer as it is (the fast CLIP tokenizer: no ftfy, no HTML unescaping).
"""
from __future__ import annotations

import torch
from PIL import Image

from .base import local_or_hub_file
from .clipscore import HFCLIPRewardModel, _processor_settings

try:  # transformers >= 5: the PIL image processor is its own class (`CLIPImageProcessor` is the torchvision one)
    from transformers import CLIPImageProcessorPil as SlowCLIPImageProcessor
except ImportError:  # transformers 4.x: `CLIPImageProcessor` is the PIL one
    from transformers import CLIPImageProcessor as SlowCLIPImageProcessor


class PickScore(HFCLIPRewardModel):
    name = "pickscore"
    default_processor = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"

    def __init__(self, model, tokenizer, image_processor: SlowCLIPImageProcessor | None = None, **settings):
        super().__init__(model, tokenizer, **settings)
        self.image_processor = image_processor or SlowCLIPImageProcessor(
            size={"shortest_edge": self.image_size}, crop_size={"height": self.image_size, "width": self.image_size},
            image_mean=list(self.mean), image_std=list(self.std),
        )

    @classmethod
    def _image_parts(cls, processor: str) -> dict:
        """The slow processor as configured in `processor`'s `preprocessor_config.json` (built from the
        defaults, as the other scorers' settings are, when the folder has none)."""
        found = local_or_hub_file(processor, "preprocessor_config.json")
        return dict(_processor_settings(processor), image_processor=SlowCLIPImageProcessor.from_pretrained(processor) if found else None)

    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        rgb = [im.convert("RGB") for im in images]  # the trainer's plain conversion (alpha dropped), before the processor
        return self.image_processor(images=rgb, return_tensors="pt").pixel_values

    def _score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        return self.model.logit_scale.float().exp() * self.cosine(images, prompts)

    def save_pretrained(self, path: str) -> None:
        super().save_pretrained(path)
        self.image_processor.save_pretrained(path)  # its own settings (it may have been loaded with more than size/mean/std)
