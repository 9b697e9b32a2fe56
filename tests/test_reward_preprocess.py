"""Reward-model inputs against each reference's own preprocessing, transcribed here from its source:

* OpenAI CLIP `clip/clip.py` `_transform` (openai/CLIP d05afc4), reused by ImageReward (`ImageReward.py`,
  THUDM/ImageReward c1392c6), CLIPScore (jmhessel/clipscore 1036465 `_transform_test`) and the LAION
  aesthetic predictor (`simple_inference.py`: `clip.load`);
* HPSv2 `hpsv2/src/open_clip/transform.py` `ResizeMaxSize` + `image_transform(resize_longest_max=True)`
  and `tokenizer.py` `tokenize` (tgxs002/HPSv2 866735e);
* PickScore `trainer/datasetss/clip_hf_dataset.py` (`image.convert("RGB")` then the slow
  `CLIPImageProcessor` of transformers 4.27.3) and its tokenizer (the fast CLIP tokenizer's normalizer);
* OpenAI CLIP `clip/simple_tokenizer.py` `basic_clean` / `whitespace_clean` and `clip.tokenize`.

Images cover RGB, RGBA with varying alpha, palette, greyscale and grey+alpha, at odd sizes (odd crop and
pad margins, up- and downscaling); prompts cover HTML escapes, odd white space, mojibake and > 77 tokens.
"""
from __future__ import annotations

import gzip
import hashlib
import html
import json
import os

import ftfy
import numpy as np
import open_clip
import pytest
import regex
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor
from transformers import CLIPImageProcessor

from reward_models.clipscore import CLIPScore
from reward_models.hpsv21 import HPSv21
from reward_models.imagereward import ImageReward
from reward_models.pickscore import PickScore, SlowCLIPImageProcessor
from reward_models.preprocess import clip_pixels, hps_pixels, openai_clip_clean

MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP, clip/clip.py `_transform`
STD = (0.26862954, 0.26130258, 0.27577711)


def _gradient(w: int, h: int, k: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x * y * k) % 256)], axis=-1).astype(np.uint8)


def _alpha(w: int, h: int) -> np.ndarray:
    return ((np.indices((h, w))[1] * 7) % 256).astype(np.uint8)  # stripes from fully transparent to opaque


RGBA = Image.fromarray(np.dstack([_gradient(301, 217, 3), _alpha(301, 217)]), "RGBA")
PALETTE = Image.fromarray(_gradient(263, 181, 9)).quantize(64)
GREY = Image.fromarray(_gradient(97, 131, 11)[..., 2], "L")  # upscaled
GREY_ALPHA = Image.fromarray(np.dstack([_gradient(97, 131, 11)[..., 2], _alpha(97, 131)]), "LA")
ODD_IMAGES = [
    Image.fromarray(_gradient(300, 200, 3)), Image.fromarray(_gradient(150, 260, 5)), Image.fromarray(_gradient(227, 224, 7)),
    RGBA, PALETTE, GREY, GREY_ALPHA,
]
HTML_PROMPTS = ["rock &amp; roll", "a cat &lt;3 a\n\t dog", "&amp;amp; twice escaped", "Caf\u00c3\u00a9 mojibake", "  Upper  CASE  "]
LONG_PROMPT = "a very detailed prompt about a red fox in the snow, " * 12  # well over 77 tokens


# ---- the references, transcribed ------------------------------------------------------------------
def _convert_image_to_rgb(image):
    return image.convert("RGB")


def openai_transform(n_px: int = 224) -> Compose:
    """clip/clip.py `_transform` (also ImageReward's `_transform` and clipscore's `_transform_test`)."""
    return Compose([
        Resize(n_px, interpolation=InterpolationMode.BICUBIC),
        CenterCrop(n_px),
        _convert_image_to_rgb,
        ToTensor(),
        Normalize(MEAN, STD),
    ])


class ResizeMaxSize(torch.nn.Module):
    """hpsv2/src/open_clip/transform.py, as published."""

    def __init__(self, max_size, interpolation=InterpolationMode.BICUBIC, fn="max", fill=0):
        super().__init__()
        self.max_size = max_size
        self.interpolation = interpolation
        self.fill = fill

    def forward(self, img):
        if isinstance(img, torch.Tensor):
            height, width = img.shape[1:]
        else:
            width, height = img.size
        scale = self.max_size / float(max(height, width))
        if scale != 1.0:
            new_size = tuple(round(dim * scale) for dim in (height, width))
            img = TF.resize(img, new_size, self.interpolation)
            pad_h = self.max_size - new_size[0]
            pad_w = self.max_size - new_size[1]
            img = TF.pad(img, padding=[pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=self.fill)
        return img


def _convert_to_rgb_or_rgba(image):
    return image if image.mode == "RGBA" else image.convert("RGB")


class MaskAwareNormalize(torch.nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.normalize = Normalize(mean=mean, std=std)

    def forward(self, tensor):
        if tensor.shape[0] == 4:
            return torch.cat([self.normalize(tensor[:3]), tensor[3:]], dim=0)
        return self.normalize(tensor)


def hps_transform(image_size: int = 224) -> Compose:
    """HPSv2 `image_transform(image_size, is_train=False, resize_longest_max=True)`, as `img_score` builds it."""
    return Compose([_convert_to_rgb_or_rgba, ToTensor(), ResizeMaxSize(image_size, fill=0), MaskAwareNormalize(MEAN, STD)])


def pickscore_pixels(image: Image.Image, size: int = 224) -> torch.Tensor:
    """PickScore's trainer: `image.convert("RGB")`, then the slow CLIPImageProcessor's steps (transformers 4.27):
    PIL bicubic resize of the short side (long = int(size * long / short)), centre crop with the offset
    floored (`image_transforms.center_crop`), rescale by 1/255, normalise."""
    image = image.convert("RGB")
    w, h = image.size
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    arr = np.asarray(image.resize(new, Image.BICUBIC))
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    arr = (arr[top : top + size, left : left + size].astype(np.float64) * (1 / 255)).astype(np.float32)
    return torch.from_numpy((arr - np.float32(MEAN)) / np.float32(STD)).permute(2, 0, 1)


def basic_clean(text):  # clip/simple_tokenizer.py
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


def whitespace_clean(text):  # clip/simple_tokenizer.py
    text = regex.sub(r"\s+", " ", text)
    text = text.strip()
    return text


def clip_tokenize_ids(text: str, context_length: int = 77) -> list[int]:
    """`clip.tokenize(text, truncate=True)` up to its end token (the BPE is open_clip's copy of OpenAI's)."""
    return [t for t in open_clip.tokenize([text], context_length)[0].tolist() if t][:context_length]


def fast_clip_tokenizer_ids(text: str, bpe: open_clip.tokenizer.SimpleTokenizer) -> list[int]:
    """The rule of the fast CLIP tokenizer PickScore's trainer used (transformers' CLIPConverter): NFC,
    `\\s+` -> " ", lower case, CLIP's split regex, byte-level BPE, start/end tokens; no ftfy, no HTML."""
    import unicodedata

    text = regex.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).lower()
    pieces = regex.findall(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", text)
    ids = [bpe.encoder[t] for p in pieces for t in bpe.bpe("".join(bpe.byte_encoder[b] for b in p.encode("utf-8"))).split(" ")]
    return [49406] + ids + [49407]


# ---- pixels ------------------------------------------------------------------------------------------
def test_clip_pixels_are_openai_transform():
    ref = torch.stack([openai_transform()(im) for im in ODD_IMAGES])
    assert torch.allclose(clip_pixels(ODD_IMAGES), ref, atol=1e-6)
    # converting to RGB before resizing (the old order) is not the reference for alpha and palette images
    converted_first = clip_pixels([im.convert("RGB") for im in ODD_IMAGES])
    for i in (3, 4, 6):  # RGBA (PIL resizes premultiplied), palette (PIL resizes "P" nearest), LA
        assert (converted_first[i] - ref[i]).abs().max() > 0.5
    assert torch.allclose(converted_first[[0, 1, 2, 5]], ref[[0, 1, 2, 5]], atol=1e-6)  # RGB and L: the same


def test_hps_pixels_are_hpsv2_transform():
    tf = hps_transform()
    refs = [tf(im) for im in ODD_IMAGES]
    assert refs[3].shape == (4, 224, 224)  # HPSv2 keeps RGBA's alpha as a 4th channel its 3-channel ViT cannot take
    ref = torch.stack([r[:3] for r in refs])
    assert torch.allclose(hps_pixels(ODD_IMAGES), ref, atol=1e-6)
    # resizing the uint8 PIL image instead of the float tensor (the old way) is up to ~0.3 away
    pil_resized = []
    for im in ODD_IMAGES:
        im = im.convert("RGB")
        s = 224 / max(im.size)
        small = im.resize((round(im.width * s), round(im.height * s)), Image.BICUBIC)
        canvas = Image.new("RGB", (224, 224))
        canvas.paste(small, ((224 - small.width) // 2, (224 - small.height) // 2))
        pil_resized.append(Normalize(MEAN, STD)(ToTensor()(canvas)))
    assert (torch.stack(pil_resized) - ref).abs().max() > 0.2


def test_hps_pads_black_and_keeps_the_whole_image():
    padded = hps_pixels(ODD_IMAGES[:1])[0]  # 300x200 -> 224x149: 75 rows of padding, 37 on top, 38 below
    black = ((0 - torch.tensor(MEAN)) / torch.tensor(STD)).view(3, 1, 1)
    assert torch.equal(padded[:, :37], black.expand(3, 37, 224)) and torch.equal(padded[:, -38:], black.expand(3, 38, 224))
    assert not torch.allclose(padded[:, 37], black.expand(3, 1, 224)[:, 0], atol=1e-3)
    # a long side already at 224: HPSv2 neither resizes nor pads (a 224x150 tensor); the same pixels, padded
    im = Image.fromarray(_gradient(224, 150, 13))
    ref = hps_transform()(im)
    assert ref.shape == (3, 150, 224)
    ours = hps_pixels([im])[0]
    assert ours.shape == (3, 224, 224) and torch.equal(ours[:, 37:187], ref)


def test_pickscore_pixels_are_the_slow_processor():
    m = PickScore.tiny(0)
    assert isinstance(m.image_processor, SlowCLIPImageProcessor)
    pixels = m.pixels(ODD_IMAGES)
    assert torch.allclose(pixels, torch.stack([pickscore_pixels(im) for im in ODD_IMAGES]), atol=1e-6)
    # transformers 5's default (torchvision) CLIP processor is not what PickScore was trained with
    fast = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    assert (fast(images=[im.convert("RGB") for im in ODD_IMAGES], return_tensors="pt").pixel_values - pixels).abs().max() > 1e-3
    # the trainer's plain convert("RGB") drops alpha; it does not composite onto white like transformers 5's convert_to_rgb
    white = Image.alpha_composite(Image.new("RGBA", RGBA.size, (255, 255, 255, 255)), RGBA)
    assert (pickscore_pixels(white) - pixels[3]).abs().max() > 0.5


def test_pickscore_loads_the_published_processor_config_offline(tmp_path):
    m = PickScore.tiny(0)
    m.save_pretrained(str(tmp_path / "model"))
    saved = json.loads((tmp_path / "model" / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "CLIPImageProcessor" and saved["crop_size"] == {"height": 224, "width": 224}
    proc = tmp_path / "laion"  # laion/CLIP-ViT-H-14-laion2B-s32B-b79K's preprocessor_config.json, as published
    proc.mkdir()
    (proc / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": list(MEAN), "image_std": list(STD), "resample": 3, "size": 224,
    }))
    m.tokenizer.save_pretrained(str(proc))
    for tok in ("tokenizer_config.json", "tokenizer.json", "vocab.json", "merges.txt", "special_tokens_map.json"):
        if os.path.exists(tmp_path / "model" / tok):
            os.remove(tmp_path / "model" / tok)  # as yuvalkirstain/PickScore_v1: weights only
    loaded = PickScore.from_pretrained(str(tmp_path / "model"), processor=str(proc))
    assert type(loaded.image_processor) is SlowCLIPImageProcessor and loaded.image_processor.backend == "pil"
    assert torch.allclose(loaded.pixels(ODD_IMAGES), torch.stack([pickscore_pixels(im) for im in ODD_IMAGES]), atol=1e-6)
    np.testing.assert_allclose(loaded.score(ODD_IMAGES[:4], HTML_PROMPTS[:4]), m.score(ODD_IMAGES[:4], HTML_PROMPTS[:4]), atol=1e-6)


# ---- text --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", HTML_PROMPTS + [LONG_PROMPT, "tabs\tand\u00a0nbsp", "\u00c9T\u00c9 \u65e5\u672c"])
def test_openai_clip_clean_is_basic_and_whitespace_clean(text):
    assert openai_clip_clean(text) == whitespace_clean(basic_clean(text)).lower()


def test_openai_clip_clean_exact():
    assert openai_clip_clean("  Rock &amp;amp; Roll\n\t&lt;3 ") == "rock & roll <3"  # unescaped twice, as basic_clean
    assert openai_clip_clean("Caf\u00c3\u00a9") == "caf\u00e9"  # ftfy repairs mojibake


def test_clipscore_tokens_are_clip_tokenize():
    m = CLIPScore.tiny(0)
    prompts = HTML_PROMPTS + [LONG_PROMPT]
    tok = m.tokenizer(m.clean_prompts(prompts), padding=True, truncation=True, max_length=77)
    for ids, mask, p in zip(tok.input_ids, tok.attention_mask, prompts):
        assert [i for i, k in zip(ids, mask) if k] == clip_tokenize_ids(p), p
    assert sum(tok.attention_mask[-1]) == 77 and tok.input_ids[-1][76] == 49407  # truncated, end token kept
    # transformers 5's CLIP tokenizer on its own does not unescape HTML (why CLIPScore cleans first)
    assert m.tokenizer("rock &amp; roll").input_ids != clip_tokenize_ids("rock &amp; roll")


def test_pickscore_tokens_are_the_fast_tokenizer_it_was_trained_with():
    m = PickScore.tiny(0)
    bpe = open_clip.tokenizer.SimpleTokenizer()
    for p in HTML_PROMPTS:
        assert m.tokenizer(m.clean_prompts([p])).input_ids[0] == fast_clip_tokenizer_ids(p, bpe), p
    assert m.tokenizer(["rock &amp; roll"]).input_ids[0] != clip_tokenize_ids("rock &amp; roll")  # `&amp;` stays


def hps_tokenize(text: str, context_length: int = 77) -> list[int]:
    """HPSv2 `tokenize`: [sot] + encode(whitespace_clean(basic_clean(text)).lower()) + [eot], cut to 77 with eot last."""
    bpe = open_clip.tokenizer.SimpleTokenizer()
    cleaned = whitespace_clean(basic_clean(text)).lower()
    pat = r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
    pieces = regex.findall(pat, cleaned, regex.IGNORECASE)
    ids = [bpe.encoder[t] for p in pieces for t in bpe.bpe("".join(bpe.byte_encoder[b] for b in p.encode("utf-8"))).split(" ")]
    tokens = [49406] + ids + [49407]
    if len(tokens) > context_length:
        tokens = tokens[:context_length]
        tokens[-1] = 49407
    return tokens + [0] * (context_length - len(tokens))


def test_hps_tokens_are_hpsv2_tokenize():
    m = HPSv21.tiny(0)
    prompts = HTML_PROMPTS + [LONG_PROMPT]
    assert m.tokenizer(prompts).tolist() == [hps_tokenize(p) for p in prompts]
    assert m.tokenizer(["rock &amp; roll"]).tolist() == m.tokenizer(["rock & roll"]).tolist()


def test_imagereward_tokens_keep_html_as_blips_bert_tokenizer():
    m = ImageReward.tiny(0)
    tok = m.tokenizer(["rock &amp; roll", "rock & roll", LONG_PROMPT], padding="max_length", truncation=True, max_length=35)
    pieces = m.tokenizer.convert_ids_to_tokens(tok.input_ids[0])
    assert pieces[:2] == ["[CLS]", "r"] and "&" in pieces and ";" in pieces  # BERT splits `&amp;`, never unescapes it
    assert tok.input_ids[0] != tok.input_ids[1]
    assert len(tok.input_ids[2]) == 35 and tok.input_ids[2][-1] == m.tokenizer.sep_token_id  # cut to 35, [SEP] last


def test_open_clip_bpe_is_openai_bpe():
    """The token references above use open_clip's packaged BPE: the very file of openai/CLIP d05afc4
    `clip/bpe_simple_vocab_16e6.txt.gz` (and of HPSv2's copy), sha256 as published."""
    path = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    with open(path, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
    with gzip.open(path) as f:
        assert len(f.read().decode("utf-8").split("\n")) == 262146  # header + 262144 merges + trailing newline
