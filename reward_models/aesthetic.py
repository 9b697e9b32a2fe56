"""LAION aesthetic predictor v2 (`sac+logos+ava1-l14-linearMSE`): a linear MLP on the L2-normalised
OpenAI CLIP ViT-L/14 image embedding, predicting a 1-10 rating. Prompts are ignored.
Pixels as LAION's `simple_inference.py` prepares them: `clip.load("ViT-L/14")`'s `_transform` (resize,
crop, then RGB; `preprocess.clip_pixels`).

Folder layout: a transformers CLIP folder (as `openai/clip-vit-large-patch14`) plus the MLP, either
ours (`aesthetic_mlp.safetensors`) or the published `sac+logos+ava1-l14-linearMSE.pth`.
"""
from __future__ import annotations

import os

import torch
from PIL import Image

from .base import LinearHead, load_state_dict_checked, read_state_dict
from .clipscore import HFCLIPRewardModel

MLP_FILES = ("aesthetic_mlp.safetensors", "sac+logos+ava1-l14-linearMSE.pth")


class AestheticScore(HFCLIPRewardModel):
    name = "aesthetic"
    uses_prompts = False

    def __init__(self, model, tokenizer, mlp: LinearHead, **kwargs):
        super().__init__(model, tokenizer, **kwargs)
        self.mlp = mlp.to(self.device, self.dtype).eval()

    def _score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        emb = torch.nn.functional.normalize(self.image_embeds(images), dim=-1)
        return self.mlp(emb).squeeze(-1)

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        processor: str | None = None,
        mlp_path: str | None = None,
    ) -> AestheticScore:
        """`path`: the CLIP folder (or hub id, then `mlp_path` is required); `mlp_path`: the MLP file,
        by default the first of `MLP_FILES` found in `path`."""
        parts = cls._load_clip(path, device, dtype, processor)
        if mlp_path is None:
            found = [os.path.join(path, f) for f in MLP_FILES if os.path.isfile(os.path.join(path, f))]
            if not found:
                raise FileNotFoundError(f"{path}: no aesthetic MLP ({' or '.join(MLP_FILES)}); pass mlp_path=")
            mlp_path = found[0]
        state = read_state_dict(mlp_path)
        if "layers.0.weight" not in state:
            raise ValueError(f"{mlp_path}: no 'layers.0.weight'; not an aesthetic MLP state dict (keys: {sorted(state)})")
        mlp = LinearHead(state["layers.0.weight"].shape[1])
        load_state_dict_checked(mlp, state, mlp_path)
        return cls(mlp=mlp, **parts)

    @classmethod
    def tiny(cls, seed: int = 0) -> AestheticScore:
        parts = cls._tiny_clip(seed)
        return cls(mlp=LinearHead(parts["model"].config.projection_dim), **parts)

    def save_pretrained(self, path: str) -> None:
        from safetensors.torch import save_file

        super().save_pretrained(path)
        save_file({k: v.contiguous() for k, v in self.mlp.state_dict().items()}, os.path.join(path, MLP_FILES[0]))
