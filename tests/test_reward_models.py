"""Reward models: every tiny twin goes through save_pretrained -> from_pretrained and its scores are
checked against the published formula recomputed here from the model's submodules, on pixels and
tokens prepared by each reference's own preprocessing (transcribed in tests/test_reward_preprocess.py:
OpenAI CLIP's `_transform`, HPSv2's `image_transform`, PickScore's slow CLIP processor, `clip.tokenize`)."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from reward_models.aesthetic import AestheticScore
from reward_models.base import CheckpointKeyError, read_state_dict
from reward_models.clipscore import CLIPScore
from reward_models.hpsv21 import CHECKPOINT, HPSv21
from reward_models.imagereward import ImageReward
from reward_models.pickscore import PickScore
from reward_models.registry import REWARD_MODELS, load_reward_model, reward_model_class
from schemas.tables import REWARD_MODEL_NAMES
from tests.test_reward_preprocess import (
    HTML_PROMPTS,
    LONG_PROMPT,
    ODD_IMAGES,
    clip_tokenize_ids,
    hps_tokenize,
    hps_transform,
    openai_transform,
    pickscore_pixels,
)

ATOL = 1e-5
PROMPTS = ["a cat sitting on a red sofa", "a lighthouse at sunset", "two dogs in the snow", "a neon sign that says open"]


def _gradient(w: int, h: int, k: int) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x * y * k) % 256)], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8))


# square, landscape, portrait (non-square: crop and pad differ), odd crop margin (round != floor)
IMAGES = [_gradient(224, 224, 1), _gradient(300, 200, 3), _gradient(150, 260, 5), _gradient(227, 224, 7)]


# RGBA, palette, greyscale(+alpha) at odd sizes with HTML-escaped and over-long prompts, scored end to end
MIXED = IMAGES + ODD_IMAGES[3:]
MIXED_PROMPTS = PROMPTS + HTML_PROMPTS[:3] + [LONG_PROMPT]


# ---- the references' pixels ----------------------------------------------------------------------
def ref_openai(images: list[Image.Image]) -> torch.Tensor:
    return torch.stack([openai_transform()(im) for im in images])


def ref_pickscore(images: list[Image.Image]) -> torch.Tensor:
    return torch.stack([pickscore_pixels(im) for im in images])


def ref_hps(images: list[Image.Image]) -> torch.Tensor:
    return torch.stack([hps_transform()(im)[:3] for im in images])


def mlp_by_hand(state: dict[str, torch.Tensor], x: torch.Tensor, prefix: str = "") -> torch.Tensor:
    """The published head: five affine maps, no activation in between."""
    for i in (0, 2, 4, 6, 7):
        x = x @ state[f"{prefix}layers.{i}.weight"].T + state[f"{prefix}layers.{i}.bias"]
    return x.squeeze(-1)


def blip_vit_by_hand(state: dict[str, torch.Tensor], x: torch.Tensor, heads: int) -> torch.Tensor:
    """BLIP's timm-style ViT (`models/vit.py`) written out on the published `blip.visual_encoder.*` keys."""
    g = lambda k: state["blip.visual_encoder." + k]
    patch = g("patch_embed.proj.weight").shape[-1]
    x = F.conv2d(x, g("patch_embed.proj.weight"), g("patch_embed.proj.bias"), stride=patch).flatten(2).transpose(1, 2)
    x = torch.cat([g("cls_token").expand(len(x), -1, -1), x], dim=1) + g("pos_embed")
    B, N, C = x.shape
    depth = len({k.split(".")[3] for k in state if k.startswith("blip.visual_encoder.blocks.")})
    for i in range(depth):
        b = f"blocks.{i}."
        h = F.layer_norm(x, (C,), g(b + "norm1.weight"), g(b + "norm1.bias"), eps=1e-6)
        qkv = F.linear(h, g(b + "attn.qkv.weight"), g(b + "attn.qkv.bias")).reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
        attn = (qkv[0] @ qkv[1].transpose(-2, -1) * (C // heads) ** -0.5).softmax(dim=-1)
        x = x + F.linear((attn @ qkv[2]).transpose(1, 2).reshape(B, N, C), g(b + "attn.proj.weight"), g(b + "attn.proj.bias"))
        h = F.layer_norm(x, (C,), g(b + "norm2.weight"), g(b + "norm2.bias"), eps=1e-6)
        h = F.linear(F.gelu(F.linear(h, g(b + "mlp.fc1.weight"), g(b + "mlp.fc1.bias"))), g(b + "mlp.fc2.weight"), g(b + "mlp.fc2.bias"))
        x = x + h
    return F.layer_norm(x, (C,), g("norm.weight"), g("norm.bias"), eps=1e-6)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Toy models gain nothing from intra-op threads, and OpenMP spinning on a busy 2-core box makes the
    file several times slower; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


_TINY: dict[type, object] = {}


def tiny0(cls):
    """`cls.tiny(0)`, built once per test session (scoring never mutates a model)."""
    if cls not in _TINY:
        _TINY[cls] = cls.tiny(0)
    return _TINY[cls]


def roundtrip(cls, tmp_path, **save_kwargs):
    model = tiny0(cls)
    model.save_pretrained(str(tmp_path / "m"), **save_kwargs)
    loaded = cls.from_pretrained(str(tmp_path / "m"))
    assert type(loaded) is cls
    np.testing.assert_allclose(loaded.score(IMAGES, PROMPTS), model.score(IMAGES, PROMPTS), atol=1e-6)
    return model, loaded


def normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


# ---- the five scorers: loaded == original == published formula ----------------------------------
def test_pickscore(tmp_path):
    _, m = roundtrip(PickScore, tmp_path)
    clip = m.model
    tok = m.tokenizer(MIXED_PROMPTS, padding=True, truncation=True, max_length=77, return_tensors="pt")
    assert tok.input_ids[0, : int(tok.attention_mask[0].sum())].tolist() == clip_tokenize_ids(PROMPTS[0])  # plain text: CLIP's BPE
    with torch.no_grad():
        img = clip.visual_projection(clip.vision_model(pixel_values=ref_pickscore(MIXED)).pooler_output)
        txt = clip.text_projection(clip.text_model(input_ids=tok.input_ids, attention_mask=tok.attention_mask).pooler_output)
        expected = clip.logit_scale.exp() * (normalize(img) * normalize(txt)).sum(-1)
    np.testing.assert_allclose(m.score(MIXED, MIXED_PROMPTS), expected.numpy(), atol=ATOL)


def test_clipscore(tmp_path):
    _, m = roundtrip(CLIPScore, tmp_path)
    clip = m.model
    ids = [clip_tokenize_ids(p) for p in MIXED_PROMPTS]  # clip.tokenize, as Hessel et al.'s clipscore.py calls it
    assert len(ids[-1]) == 77 and ids[-1][-1] == 49407  # truncated, end token kept
    width = max(map(len, ids))
    input_ids = torch.tensor([t + [49407] * (width - len(t)) for t in ids])
    mask = torch.tensor([[1] * len(t) + [0] * (width - len(t)) for t in ids])
    with torch.no_grad():
        img = clip.visual_projection(clip.vision_model(pixel_values=ref_openai(MIXED)).pooler_output)
        txt = clip.text_projection(clip.text_model(input_ids=input_ids, attention_mask=mask).pooler_output)
        cos = (normalize(img) * normalize(txt)).sum(-1)
    assert (cos < 0).any() and (cos > 0).any()  # the clamp at 0 is exercised
    np.testing.assert_allclose(m.score(MIXED, MIXED_PROMPTS), (2.5 * cos.clamp(min=0)).numpy(), atol=ATOL)


def test_aesthetic(tmp_path):
    _, m = roundtrip(AestheticScore, tmp_path)
    clip = m.model
    with torch.no_grad():
        emb = normalize(clip.visual_projection(clip.vision_model(pixel_values=ref_openai(MIXED)).pooler_output))
        expected = mlp_by_hand(m.mlp.state_dict(), emb)
    scores = m.score(MIXED, MIXED_PROMPTS)
    np.testing.assert_allclose(scores, expected.numpy(), atol=ATOL)
    np.testing.assert_array_equal(m.score(MIXED, None), scores)  # prompts are ignored
    assert len(set(np.round(scores, 6))) == len(MIXED)


def test_aesthetic_loads_published_pth(tmp_path):
    m = tiny0(AestheticScore)
    m.save_pretrained(str(tmp_path))
    os.remove(tmp_path / "aesthetic_mlp.safetensors")
    torch.save(m.mlp.state_dict(), tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    np.testing.assert_allclose(AestheticScore.from_pretrained(str(tmp_path)).score(IMAGES, None), m.score(IMAGES, None), atol=1e-6)


def test_hpsv21(tmp_path):
    _, m = roundtrip(HPSv21, tmp_path)
    tokens = torch.tensor([hps_tokenize(p) for p in MIXED_PROMPTS])
    with torch.no_grad():
        txt = normalize(m.model.encode_text(tokens))
        img_pad = normalize(m.model.visual(ref_hps(MIXED)))
        img_crop = normalize(m.model.visual(ref_openai(MIXED)))
    expected = (img_pad * txt).sum(-1).numpy()
    scores = m.score(MIXED, MIXED_PROMPTS)
    np.testing.assert_allclose(scores, expected, atol=ATOL)
    crop_scores = (img_crop * txt).sum(-1).numpy()
    assert abs(scores[0] - crop_scores[0]) < ATOL  # square image: padding and cropping agree
    assert np.abs(scores[1:3] - crop_scores[1:3]).min() > 1e-3  # non-square: the padded pixels are what is scored


def test_imagereward(tmp_path):
    assert (ImageReward.mean, ImageReward.std) == (0.16717362830052426, 1.0333394966054072)
    _, m = roundtrip(ImageReward, tmp_path)
    tok = m.tokenizer(MIXED_PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    assert tok.input_ids.shape == (8, 35) and (tok.input_ids[:, 0] == m.tokenizer.cls_token_id).all()  # not [ENC]
    net = m.net
    with torch.no_grad():
        image_embeds = net.vision(pixel_values=ref_openai(MIXED)).last_hidden_state
        ones = torch.ones(image_embeds.shape[:2], dtype=torch.long)

        def cls_features(**kw):
            out = net.text(input_ids=tok.input_ids, attention_mask=tok.attention_mask, encoder_hidden_states=image_embeds,
                           encoder_attention_mask=ones, **kw)
            return out.last_hidden_state[:, 0, :]

        raw = mlp_by_hand(net.mlp.state_dict(), cls_features())
        causal = mlp_by_hand(net.mlp.state_dict(), cls_features(is_decoder=True))
    expected = (raw - 0.16717362830052426) / 1.0333394966054072
    scores = m.score(MIXED, MIXED_PROMPTS)
    np.testing.assert_allclose(scores, expected.numpy(), atol=ATOL)
    # the text encoder runs bidirectionally ("multimodal" mode), not as BLIP's causal decoder
    assert np.abs(scores - ((causal - 0.16717362830052426) / 1.0333394966054072).numpy()).max() > 1e-4


def test_imagereward_published_layout(tmp_path):
    m = tiny0(ImageReward)
    m.save_pretrained(str(tmp_path), layout="published")
    state = torch.load(tmp_path / "ImageReward.pt", weights_only=True)
    for key in ("blip.visual_encoder.cls_token", "blip.visual_encoder.pos_embed", "blip.visual_encoder.patch_embed.proj.weight",
                "blip.visual_encoder.blocks.1.attn.qkv.weight", "blip.visual_encoder.blocks.1.attn.proj.bias",
                "blip.visual_encoder.blocks.0.mlp.fc2.weight", "blip.visual_encoder.norm.weight",
                "blip.text_encoder.encoder.layer.1.crossattention.self.key.weight",
                "blip.text_encoder.embeddings.word_embeddings.weight", "mlp.layers.7.bias"):
        assert key in state, key
    # keys the published checkpoint carries and ImageReward never uses
    state["blip.vision_proj.weight"] = torch.zeros(256, 128)
    state["blip.text_proj.weight"] = torch.zeros(256, 32)
    state["blip.text_encoder.embeddings.position_ids"] = torch.arange(40)[None]
    torch.save(state, tmp_path / "ImageReward.pt")
    loaded = ImageReward.from_pretrained(str(tmp_path))
    assert loaded.net.vision.config.num_attention_heads == 2 and loaded.net.vision.config.layer_norm_eps == 1e-6
    np.testing.assert_allclose(loaded.score(IMAGES, PROMPTS), m.score(IMAGES, PROMPTS), atol=1e-6)
    with torch.no_grad():  # the mapped ViT computes BLIP's ViT on the published weights
        pixels = ref_openai(IMAGES)
        ours = loaded.net.vision(pixel_values=pixels).last_hidden_state
        assert torch.allclose(ours, blip_vit_by_hand(state, pixels, heads=2), atol=ATOL)

    state["blip.text_encoder.pooler.dense.weight"] = torch.zeros(32, 32)
    del state["blip.visual_encoder.norm.bias"]
    torch.save(state, tmp_path / "ImageReward.pt")
    with pytest.raises(CheckpointKeyError, match=r"blip\.visual_encoder\.norm\.bias.*blip\.text_encoder\.pooler\.dense\.weight"):
        ImageReward.from_pretrained(str(tmp_path))


# ---- checkpoint hygiene --------------------------------------------------------------------------
def test_hps_key_mismatch_names_the_keys(tmp_path):
    tiny0(HPSv21).save_pretrained(str(tmp_path))
    ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    ckpt["state_dict"]["bogus.weight"] = torch.zeros(1)
    del ckpt["state_dict"]["visual.proj"]
    torch.save(ckpt, tmp_path / CHECKPOINT)
    with pytest.raises(CheckpointKeyError, match=r"missing keys \['visual\.proj'\], unexpected keys \['bogus\.weight'\]"):
        HPSv21.from_pretrained(str(tmp_path))


def test_bare_hps_state_dict_loads(tmp_path):
    m = tiny0(HPSv21)
    m.save_pretrained(str(tmp_path))
    torch.save(m.model.state_dict(), tmp_path / CHECKPOINT)  # no {"state_dict": ...} wrapper
    np.testing.assert_allclose(HPSv21.from_pretrained(str(tmp_path)).score(IMAGES, PROMPTS), m.score(IMAGES, PROMPTS), atol=1e-6)


def test_aesthetic_mlp_missing_key(tmp_path):
    m = tiny0(AestheticScore)
    m.save_pretrained(str(tmp_path))
    state = load_file(tmp_path / "aesthetic_mlp.safetensors")
    del state["layers.7.bias"]
    save_file(state, tmp_path / "aesthetic_mlp.safetensors")
    with pytest.raises(CheckpointKeyError, match=r"layers\.7\.bias"):
        AestheticScore.from_pretrained(str(tmp_path))


def test_transformers_checkpoint_key_mismatch(tmp_path):
    tiny0(PickScore).save_pretrained(str(tmp_path))
    state = load_file(tmp_path / "model.safetensors")
    del state["text_projection.weight"]
    state["extra.bias"] = torch.zeros(2)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointKeyError, match=r"text_projection\.weight.*extra\.bias"):
        PickScore.from_pretrained(str(tmp_path))


class _NotATensor:
    pass


def test_full_pickles_are_refused(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _NotATensor()}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError):
        read_state_dict(tmp_path / "evil.pt")


# ---- protocol ------------------------------------------------------------------------------------
def test_registry():
    assert tuple(REWARD_MODELS) == REWARD_MODEL_NAMES
    for name in REWARD_MODEL_NAMES:
        assert reward_model_class(name).name == name
    with pytest.raises(ValueError, match="unknown reward model 'pickscor'.*pickscore"):
        reward_model_class("pickscor")
    assert isinstance(load_reward_model("clipscore", "tiny"), CLIPScore)


@pytest.mark.parametrize("name", REWARD_MODEL_NAMES)
def test_protocol(name):
    cls = REWARD_MODELS[name]
    m = cls.tiny(0)
    scores = m.score(IMAGES, PROMPTS)
    assert scores.dtype == np.float32 and scores.shape == (4,) and np.isfinite(scores).all()
    assert np.ptp(m.score(IMAGES, PROMPTS[:1] * 4)) > 1e-3  # the pixels move the score: preprocessing is tested
    np.testing.assert_array_equal(tiny0(cls).score(IMAGES, PROMPTS), scores)  # deterministic in the seed
    assert not np.allclose(cls.tiny(1).score(IMAGES, PROMPTS), scores)
    m.batch_size = 3  # batching (and text padding per batch) must not change a score
    np.testing.assert_allclose(m.score(IMAGES, PROMPTS), scores, atol=1e-5)
    assert m.score([], []).shape == (0,)
    with pytest.raises(ValueError):
        m.score(IMAGES, PROMPTS[:2])
    # a video scores the mean of its frames; frames may be PIL images or uint8 arrays
    videos = [IMAGES[:3], [np.asarray(IMAGES[3])]]
    expected = [m.score(IMAGES[:3], [PROMPTS[0]] * 3).mean(), scores[3]]
    np.testing.assert_allclose(m.score_video(videos, [PROMPTS[0], PROMPTS[3]]), expected, atol=1e-5)


@pytest.mark.parametrize("name", REWARD_MODEL_NAMES)
def test_from_pretrained_in_bfloat16(name, tmp_path):
    cls = REWARD_MODELS[name]
    tiny0(cls).save_pretrained(str(tmp_path))
    half = load_reward_model(name, str(tmp_path), dtype="bfloat16")
    assert half.dtype == torch.bfloat16
    full = tiny0(cls).score(IMAGES, PROMPTS)
    scores = half.score(IMAGES, PROMPTS)
    assert scores.dtype == np.float32
    assert np.abs(scores - full).max() < 0.05 * max(1.0, np.abs(full).max())
