"""ImageReward (Xu et al., 2023): BLIP ViT-L image encoder, BERT-base text encoder cross-attending to
the image tokens, and an MLP on the [CLS] output, normalised by the published mean/std.

Built from transformers' BLIP classes (the `image-reward` package pins old libraries): `BlipVisionModel`
is BLIP's ViT (its `last_hidden_state` is the final-LayerNorm output, as BLIP's `visual_encoder`), and
`BlipTextModel(add_pooling_layer=False)` called with `encoder_hidden_states` and without `is_decoder` is
BLIP's `BertModel` in "multimodal" mode: bidirectional self-attention plus cross-attention.

Inputs as `ImageReward.score` prepares them: pixels through its `_transform` (OpenAI CLIP's: resize,
crop, then RGB; `preprocess.clip_pixels`), the prompt through BLIP's BERT tokenizer as it is (BERT's
own normalisation only, no HTML unescaping), padded to 35 tokens.

Two folder layouts load:
* ours: `config.json` (vision + text configs), `model.safetensors`, tokenizer files;
* the published one (`THUDM/ImageReward`): `ImageReward.pt` + `med_config.json`, tokenizer files
  beside them or else `bert-base-uncased` with BLIP's `[DEC]`/`[ENC]` tokens. Keys are mapped from
  `blip.visual_encoder.*` / `blip.text_encoder.*` / `mlp.*`; the ViT size is read from the weights.
"""
from __future__ import annotations

import json
import os
import re
import string

import torch
from PIL import Image
from torch import nn
from transformers import AutoTokenizer, BertTokenizerFast, BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

from .base import LinearHead, RewardModel, as_dtype, local_or_hub_file, raise_on_key_mismatch, read_json, read_state_dict
from .preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_pixels

MEAN, STD = 0.16717362830052426, 1.0333394966054072  # ImageReward's score normalisation
MAX_LENGTH = 35
PUBLISHED_CKPT, PUBLISHED_MED = "ImageReward.pt", "med_config.json"
HUB_ID = "THUDM/ImageReward"
# keys of the published checkpoint that ImageReward itself never uses (BLIP's contrastive projections)
UNUSED_PUBLISHED = re.compile(r"^blip\.(vision_proj|text_proj)\.|^blip\.text_encoder\.embeddings\.position_ids$")
# ours (transformers BLIP vision) -> BLIP's timm-style ViT, as in transformers' BLIP conversion script
_VISION_RENAMES = [
    (r"^embeddings\.class_embedding$", "cls_token"),
    (r"^embeddings\.position_embedding$", "pos_embed"),
    (r"^embeddings\.patch_embedding\.", "patch_embed.proj."),
    (r"^encoder\.layers\.(\d+)\.layer_norm1\.", r"blocks.\1.norm1."),
    (r"^encoder\.layers\.(\d+)\.layer_norm2\.", r"blocks.\1.norm2."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.qkv\.", r"blocks.\1.attn.qkv."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.projection\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layers\.(\d+)\.mlp\.", r"blocks.\1.mlp."),
    (r"^post_layernorm\.", "norm."),
]
TINY_CORPUS = [
    "a photo of a cat sitting on a red sofa", "a watercolor painting of a lighthouse at sunset",
    "two dogs playing in the snow", "a portrait of an old man with a grey beard, studio lighting",
    "a neon sign that says open", "a bowl of fruit on a wooden table", "an astronaut riding a horse on mars",
    "a futuristic city skyline at night", "three red apples and one green pear", "a close up of a hand holding a pen",
    "a mountain lake surrounded by pine trees", "a cartoon robot waving hello", "a blue car parked next to a yellow house",
    "a poster with the word welcome in bold letters", "a child reading a book under a tree", "an oil painting of a stormy sea",
]


def tiny_tokenizer() -> BertTokenizerFast:
    """An uncased BERT WordPiece tokenizer over the corpus words, characters and `##` continuations,
    plus BLIP's `[DEC]`/`[ENC]`. Built, not trained: the `tokenizers` WordPiece trainer breaks ties in
    hash order, so its ids change from one process to the next and `tiny(seed)` would not be reproducible."""
    words = sorted({w for s in TINY_CORPUS for w in re.findall(r"\w+|[^\w\s]", s.lower())})
    chars = sorted(set(string.ascii_lowercase + string.digits + string.punctuation) | {c for w in words for c in w})
    vocab = list(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars] + words))
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)
    tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    return tokenizer


def published_name(key: str) -> str:
    """Name in the published `ImageReward.pt` of one of our state-dict keys."""
    head, _, rest = key.partition(".")
    if head == "vision":
        for pattern, repl in _VISION_RENAMES:
            if re.match(pattern, rest):
                return "blip.visual_encoder." + re.sub(pattern, repl, rest)
        raise KeyError(key)
    return {"text": "blip.text_encoder.", "mlp": "mlp."}[head] + rest


class ImageRewardNet(nn.Module):
    def __init__(self, vision_config: BlipVisionConfig, text_config: BlipTextConfig):
        super().__init__()
        text_config.is_decoder = True  # BLIP text layers only build cross-attention when this is set
        self.vision = BlipVisionModel(vision_config)
        self.text = BlipTextModel(text_config, add_pooling_layer=False)
        self.mlp = LinearHead(text_config.hidden_size)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        image_embeds = self.vision(pixel_values=pixel_values).last_hidden_state
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        text = self.text(
            input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts
        )
        return self.mlp(text.last_hidden_state[:, 0, :]).squeeze(-1)


def _vision_config_from_weights(state: dict[str, torch.Tensor]) -> BlipVisionConfig:
    """BLIP's ViT as built by `create_vit`: sizes from the weights, 64-dim heads (ViT-B 12x64, ViT-L 16x64), eps 1e-6."""
    width, _, patch, _ = state["blip.visual_encoder.patch_embed.proj.weight"].shape
    num_patches = state["blip.visual_encoder.pos_embed"].shape[1] - 1
    depth = len({k.split(".")[3] for k in state if k.startswith("blip.visual_encoder.blocks.")})
    return BlipVisionConfig(
        hidden_size=width, patch_size=patch, image_size=patch * round(num_patches**0.5), num_hidden_layers=depth,
        num_attention_heads=width // 64, intermediate_size=state["blip.visual_encoder.blocks.0.mlp.fc1.weight"].shape[0],
        layer_norm_eps=1e-6, hidden_act="gelu",
    )


def _text_config_from_med(med: dict, encoder_width: int) -> BlipTextConfig:
    """BLIP's `med_config.json` (a BertConfig); BLIP overrides `encoder_width` with the ViT width."""
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "max_position_embeddings", "layer_norm_eps", "hidden_act", "pad_token_id", "bos_token_id", "sep_token_id")
    return BlipTextConfig(**{k: med[k] for k in keys if k in med}, encoder_hidden_size=encoder_width, is_decoder=True)


class ImageReward(RewardModel):
    name = "imagereward"
    mean, std = MEAN, STD

    def __init__(self, net: ImageRewardNet, tokenizer: BertTokenizerFast):
        self.net = net.eval()
        self.tokenizer = tokenizer
        self.image_size = net.vision.config.image_size
        self.device, self.dtype = next(net.parameters()).device, next(net.parameters()).dtype

    def _score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        pixels = clip_pixels(images, self.image_size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD).to(self.device, self.dtype)
        # ImageReward feeds the ids as tokenised: [CLS] is NOT replaced by BLIP's [ENC] token
        tok = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        raw = self.net(pixels, tok.input_ids.to(self.device), tok.attention_mask.to(self.device))
        return (raw.float() - self.mean) / self.std

    # --- loading ------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str = HUB_ID, device: str = "cpu", dtype: torch.dtype = torch.float32) -> ImageReward:
        """`path`: a folder in our layout or the published one, or the hub repo `THUDM/ImageReward`."""
        if os.path.isfile(os.path.join(path, "model.safetensors")):
            cfg = read_json(os.path.join(path, "config.json"))
            net = ImageRewardNet(BlipVisionConfig(**cfg["vision_config"]), BlipTextConfig(**cfg["text_config"]))
            state = read_state_dict(os.path.join(path, "model.safetensors"))
            expected = set(net.state_dict())
            raise_on_key_mismatch(expected - set(state), set(state) - expected, path)
        else:
            ckpt, med = local_or_hub_file(path, PUBLISHED_CKPT), local_or_hub_file(path, PUBLISHED_MED)
            if ckpt is None or med is None:
                raise FileNotFoundError(f"{path}: neither model.safetensors nor {PUBLISHED_CKPT} + {PUBLISHED_MED}")
            published = read_state_dict(ckpt)
            vision_config = _vision_config_from_weights(published)
            net = ImageRewardNet(vision_config, _text_config_from_med(read_json(med), vision_config.hidden_size))
            ours = {published_name(k): k for k in net.state_dict()}
            unexpected = {k for k in published if k not in ours and not UNUSED_PUBLISHED.match(k)}
            raise_on_key_mismatch(set(ours) - set(published), unexpected, ckpt)
            state = {ours[k]: v for k, v in published.items() if k in ours}
        net.load_state_dict(state, strict=True)
        return cls(net.to(device, as_dtype(dtype)), cls._load_tokenizer(path))

    @staticmethod
    def _load_tokenizer(path: str) -> BertTokenizerFast:
        if os.path.isdir(path) and os.path.isfile(os.path.join(path, "tokenizer_config.json")):
            return AutoTokenizer.from_pretrained(path)
        # BLIP's init_tokenizer: bert-base-uncased + [DEC] (bos) + [ENC]
        tokenizer = AutoTokenizer.from_pretrained("bert-base-uncased")
        tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
        return tokenizer

    @classmethod
    def tiny(cls, seed: int = 0) -> ImageReward:
        tokenizer = tiny_tokenizer()
        vision = BlipVisionConfig(
            hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, image_size=224, patch_size=32,
            layer_norm_eps=1e-6, initializer_range=0.02,  # BlipVisionConfig's default 1e-10 makes a blind tiny ViT
        )
        text = BlipTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=40, encoder_hidden_size=128, pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id, sep_token_id=tokenizer.sep_token_id, eos_token_id=tokenizer.sep_token_id,
            initializer_range=0.5,  # at 0.02 the toy cross-attention barely lets the image move the score
        )
        torch.manual_seed(seed)
        return cls(ImageRewardNet(vision, text), tokenizer)

    # --- saving -------------------------------------------------------------------------------
    def save_pretrained(self, path: str, layout: str = "vipo") -> None:
        """`layout="vipo"`: config.json + model.safetensors; `"published"`: ImageReward.pt + med_config.json."""
        os.makedirs(path, exist_ok=True)
        self.tokenizer.save_pretrained(path)
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        if layout == "vipo":
            from safetensors.torch import save_file

            cfg = {"vision_config": self.net.vision.config.to_dict(), "text_config": self.net.text.config.to_dict()}
            with open(os.path.join(path, "config.json"), "w") as f:
                json.dump(cfg, f, indent=2)
            save_file(state, os.path.join(path, "model.safetensors"))
        elif layout == "published":
            t = self.net.text.config
            med = {
                "architectures": ["BertModel"], "model_type": "bert", "hidden_act": t.hidden_act, "hidden_size": t.hidden_size,
                "intermediate_size": t.intermediate_size, "layer_norm_eps": t.layer_norm_eps,
                "max_position_embeddings": t.max_position_embeddings, "num_attention_heads": t.num_attention_heads,
                "num_hidden_layers": t.num_hidden_layers, "pad_token_id": t.pad_token_id, "vocab_size": t.vocab_size,
                "bos_token_id": t.bos_token_id, "sep_token_id": t.sep_token_id,
                "encoder_width": t.encoder_hidden_size, "add_cross_attention": True,
            }
            with open(os.path.join(path, PUBLISHED_MED), "w") as f:
                json.dump(med, f, indent=2)
            torch.save({published_name(k): v for k, v in state.items()}, os.path.join(path, PUBLISHED_CKPT))
        else:
            raise ValueError(f"layout must be 'vipo' or 'published', not {layout!r}")
