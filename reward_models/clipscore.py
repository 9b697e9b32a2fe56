"""CLIPScore (Hessel et al., 2021) and the transformers-CLIP plumbing shared with PickScore and the
aesthetic predictor.

A scorer of this family is a transformers `CLIPModel` + its tokenizer + the CLIP image preprocessing
read from `preprocessor_config.json`. `save_pretrained` writes exactly the published hub layout
(model, tokenizer, `CLIPImageProcessor` config), so published checkpoints and our tiny twins load
through the one `from_pretrained` path.

CLIPScore's inputs are those of Hessel et al.'s `clipscore.py`: pixels through `Resize, CenterCrop,
convert("RGB"), ToTensor, Normalize` (`preprocess.clip_pixels`), text cleaned as `clip.tokenize` does
(`preprocess.openai_clip_clean`) and truncated to 77 tokens with the end token kept.
"""
from __future__ import annotations

import os

import torch
from PIL import Image
from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel, PreTrainedTokenizerBase

from .base import RewardModel, as_dtype, local_or_hub_file, raise_on_key_mismatch, read_json
from .offline_tokenizers import clip_tokenizer
from .preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_pixels, openai_clip_clean

TINY_CLIP = dict(
    text_config=dict(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
    ),
    vision_config=dict(image_size=224, patch_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
    projection_dim=16,
)  # image_size 224 and the real tokenizer: preprocessing and tokenisation are the published ones


def _embedding(out: torch.Tensor | object) -> torch.Tensor:
    """transformers 5 returns an output object from `get_*_features` (the embedding is `.pooler_output`); 4.x a tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _processor_settings(path: str) -> dict:
    """Resize/crop size and mean/std from a `preprocessor_config.json` (OpenAI CLIP's when absent)."""
    file = local_or_hub_file(path, "preprocessor_config.json")
    cfg = read_json(file) if file else {}
    crop = cfg.get("crop_size", 224)
    crop = crop["height"] if isinstance(crop, dict) else int(crop)
    size = cfg.get("size", {"shortest_edge": crop})
    size = size.get("shortest_edge", crop) if isinstance(size, dict) else int(size)
    if size != crop:
        raise ValueError(f"{path}: resize {size} != crop {crop} is not a CLIP preprocessing")
    return dict(image_size=crop, mean=tuple(cfg.get("image_mean", OPENAI_CLIP_MEAN)), std=tuple(cfg.get("image_std", OPENAI_CLIP_STD)))


class HFCLIPRewardModel(RewardModel):
    """Base of the transformers-CLIP scorers: loading, saving, tiny twin, embeddings."""

    default_processor: str | None = None  # where tokenizer/preprocessor live when the model repo lacks them

    def __init__(
        self,
        model: CLIPModel,
        tokenizer: PreTrainedTokenizerBase,
        image_size: int = 224,
        mean: tuple[float, ...] = OPENAI_CLIP_MEAN,
        std: tuple[float, ...] = OPENAI_CLIP_STD,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_size, self.mean, self.std = image_size, tuple(mean), tuple(std)
        self.device, self.dtype = next(model.parameters()).device, next(model.parameters()).dtype

    # --- embeddings -------------------------------------------------------------------------
    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        """OpenAI CLIP's `_transform` (resize, crop, then RGB): what CLIPScore and the aesthetic predictor used."""
        return clip_pixels(images, self.image_size, self.mean, self.std)

    def clean_prompts(self, prompts: list[str]) -> list[str]:
        """Text cleaning before the tokenizer; none here (the transformers tokenizer's own normalizer only)."""
        return prompts

    def image_embeds(self, images: list[Image.Image]) -> torch.Tensor:
        """Projected image embeddings (CLIP `encode_image`), not normalised."""
        pixels = self.pixels(images).to(self.device, self.dtype)
        return _embedding(self.model.get_image_features(pixel_values=pixels))

    def text_embeds(self, prompts: list[str]) -> torch.Tensor:
        """Projected text embeddings; text truncated to CLIP's 77 tokens (start and end token kept)."""
        tok = self.tokenizer(self.clean_prompts(prompts), padding=True, truncation=True, max_length=77, return_tensors="pt")
        tok = tok.to(self.device)
        return _embedding(self.model.get_text_features(input_ids=tok.input_ids, attention_mask=tok.attention_mask))

    def cosine(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        img = torch.nn.functional.normalize(self.image_embeds(images).float(), dim=-1)
        txt = torch.nn.functional.normalize(self.text_embeds(prompts).float(), dim=-1)
        return (img * txt).sum(-1)

    # --- loading / saving -------------------------------------------------------------------
    @classmethod
    def _load_clip(cls, path: str, device: str, dtype: torch.dtype | str, processor: str | None = None) -> dict:
        """The CLIP model + tokenizer + preprocessing settings; every key mismatch is an error."""
        model, info = CLIPModel.from_pretrained(path, dtype=as_dtype(dtype), output_loading_info=True)
        mismatched = [k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", [])]
        raise_on_key_mismatch(set(info["missing_keys"]) | set(mismatched), info["unexpected_keys"], path)
        if processor is None:  # beside the weights, unless the model repo ships none (PickScore_v1)
            beside = os.path.isfile(os.path.join(path, "tokenizer_config.json")) if os.path.isdir(path) else False
            processor = path if beside or not cls.default_processor else cls.default_processor
        return dict(model=model.to(device), tokenizer=AutoTokenizer.from_pretrained(processor), **cls._image_parts(processor))

    @classmethod
    def _image_parts(cls, processor: str) -> dict:
        """Constructor keywords for the image preprocessing, read from `processor`'s `preprocessor_config.json`."""
        return _processor_settings(processor)

    @classmethod
    def from_pretrained(
        cls, path: str, device: str = "cpu", dtype: torch.dtype = torch.float32, processor: str | None = None
    ) -> HFCLIPRewardModel:
        """`path`: hub id or folder of a transformers CLIP checkpoint. `processor`: where the tokenizer and
        `preprocessor_config.json` are, when not beside the weights."""
        return cls(**cls._load_clip(path, device, dtype, processor))

    @classmethod
    def _tiny_clip(cls, seed: int) -> dict:
        tokenizer = clip_tokenizer()
        torch.manual_seed(seed)
        return dict(model=CLIPModel(CLIPConfig(**TINY_CLIP)).eval(), tokenizer=tokenizer)

    @classmethod
    def tiny(cls, seed: int = 0) -> HFCLIPRewardModel:
        return cls(**cls._tiny_clip(seed))

    def save_pretrained(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        CLIPImageProcessor(
            size={"shortest_edge": self.image_size},
            crop_size={"height": self.image_size, "width": self.image_size},
            image_mean=list(self.mean),
            image_std=list(self.std),
        ).save_pretrained(path)


class CLIPScore(HFCLIPRewardModel):
    """CLIPScore = 2.5 * max(cos(image, text), 0) with OpenAI CLIP ViT-L/14 (`openai/clip-vit-large-patch14`).

    Hessel et al. also prefix captions with "A photo depicts"; generation prompts are not captions, so
    no prefix is added by default (set `prefix` to reproduce the caption-evaluation setting exactly)."""

    name = "clipscore"
    weight: float = 2.5
    prefix: str = ""

    def clean_prompts(self, prompts: list[str]) -> list[str]:
        """Hessel et al. tokenise with `clip.tokenize`: OpenAI's `basic_clean` + `whitespace_clean` + lower case."""
        return [openai_clip_clean(p) for p in prompts]

    def _score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        prompts = [self.prefix + p for p in prompts]
        return self.weight * self.cosine(images, prompts).clamp(min=0)
