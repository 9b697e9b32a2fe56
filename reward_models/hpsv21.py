"""HPS v2.1 (Wu et al., 2023): open_clip ViT-H-14 fine-tuned on HPD v2, `HPS_v2.1_compressed.pt` in
the hub repo `xswu/HPSv2`. Score = cos(image, text) (reports often show it x100).

Its preprocessing is not CLIP's: the image becomes a float tensor first, its LONGEST side is resized to
224 (torchvision bicubic, antialiased) and it is padded to a square with black, so nothing is cropped
away (`preprocess.hps_pixels`). Text goes through open_clip's `SimpleTokenizer`, which cleans it as
HPSv2's copy of OpenAI's tokenizer does (ftfy, HTML unescaped twice, white space, lower case).
Folder layout: the checkpoint (a dict with `state_dict`, or a bare state dict) plus, for anything other
than ViT-H-14, `open_clip_config.json` with the model cfg.
"""
from __future__ import annotations

import json
import os

import open_clip
import torch
from open_clip.model import CLIP
from open_clip.tokenizer import SimpleTokenizer
from PIL import Image

from .base import RewardModel, as_dtype, load_state_dict_checked, local_or_hub_file, read_json, read_state_dict
from .preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, hps_pixels

CHECKPOINT = "HPS_v2.1_compressed.pt"
CONFIG = "open_clip_config.json"
ARCH = "ViT-H-14"
HUB_ID = "xswu/HPSv2"
TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "head_width": 16, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}  # image 224 and the real BPE: preprocessing and tokenisation are the published ones


class HPSv21(RewardModel):
    name = "hpsv21"

    def __init__(self, model: CLIP, model_cfg: dict):
        self.model = model.eval()
        self.model_cfg = model_cfg
        # what open_clip.get_tokenizer("ViT-H-14") returns: the real CLIP BPE shipped in the wheel
        self.tokenizer = SimpleTokenizer(context_length=model_cfg["text_cfg"].get("context_length", 77))
        self.image_size = model_cfg["vision_cfg"]["image_size"]
        self.device, self.dtype = next(model.parameters()).device, next(model.parameters()).dtype

    def _score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        pixels = hps_pixels(images, self.image_size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD).to(self.device, self.dtype)
        img = self.model.encode_image(pixels, normalize=True).float()
        txt = self.model.encode_text(self.tokenizer(prompts).to(self.device), normalize=True).float()
        return (img * txt).sum(-1)

    @classmethod
    def from_pretrained(cls, path: str = HUB_ID, device: str = "cpu", dtype: torch.dtype = torch.float32) -> HPSv21:
        """`path`: a checkpoint file, a folder holding `HPS_v2.1_compressed.pt`, or a hub repo id."""
        if os.path.isfile(path):
            ckpt, folder = path, os.path.dirname(path)
        else:
            ckpt, folder = local_or_hub_file(path, CHECKPOINT), path
            if ckpt is None:
                raise FileNotFoundError(f"{path}: no {CHECKPOINT}")
        cfg_file = os.path.join(folder, CONFIG)
        cfg = read_json(cfg_file) if os.path.isfile(cfg_file) else open_clip.get_model_config(ARCH)
        model = CLIP(**cfg, output_dict=True)  # = open_clip.create_model(ARCH) without pretrained weights
        load_state_dict_checked(model, read_state_dict(ckpt), ckpt)
        return cls(model.to(device, as_dtype(dtype)), cfg)

    @classmethod
    def tiny(cls, seed: int = 0) -> HPSv21:
        torch.manual_seed(seed)
        return cls(CLIP(**TINY_CFG, output_dict=True), TINY_CFG)

    def save_pretrained(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        torch.save({"state_dict": self.model.state_dict()}, os.path.join(path, CHECKPOINT))
        with open(os.path.join(path, CONFIG), "w") as f:
            json.dump(self.model_cfg, f, indent=2)
