"""A toy Qwen2-VL rater built offline: the real architecture and processor classes at toy size.

`save_tiny_rater(folder)` writes a folder that `AutoModelForImageTextToText.from_pretrained` and
`AutoProcessor.from_pretrained` load exactly like `Qwen/Qwen2.5-VL-7B-Instruct`'s. The tokenizer is
a byte-level BPE with an explicit vocabulary (the 256 byte symbols, no merges) plus Qwen's special
tokens, so ids are the same in every process; "A" and "B" are single tokens (their byte symbols).
`words=("Yes", "No")` (the alignment's labels) adds BPE merges that make each word, bare and after a
space, one token too (ids after the 256 byte symbols, before the special tokens); without `words` the
tokenizer and the weights are exactly the default rater's.
Weights are drawn from one seeded generator in parameter-name order (no dependence on transformers'
init order) and scaled so the label probabilities differ visibly between images.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen2-VL's chat template (the one shipped in Qwen/Qwen2-VL-*-Instruct's chat_template.json).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _word_merges(words: Sequence[str], symbols: dict[int, str]) -> list[tuple[str, str]]:
    """BPE merges, in rank order, that spell each word and " " + word as one token: left to right
    over the word's byte symbols, then the space symbol onto the whole word."""
    merges: list[tuple[str, str]] = []
    for word in words:
        chars = [symbols[b] for b in word.encode("utf-8")]
        steps = [("".join(chars[:i]), chars[i]) for i in range(1, len(chars))]
        steps.append((symbols[ord(" ")], "".join(chars)))
        merges += [m for m in steps if m not in merges]
    return merges


def tiny_tokenizer(words: Sequence[str] = ()):
    """Byte-level BPE over an explicit vocabulary: ids 0-255 the byte symbols, then the tokens the
    merges of `words` make (none by default), then the special tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from reward_models.offline_tokenizers import _bytes_to_unicode

    symbols = _bytes_to_unicode()
    vocab = {symbols[b]: b for b in range(256)}
    merges = _word_merges(words, symbols)
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
        padding_side="left",
    )


def tiny_processor(words: Sequence[str] = ()):
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(),
        tokenizer=tiny_tokenizer(words),
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )


def _reinit(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if p.ndim >= 2:
                fan_in = math.prod(p.shape[1:])
                std = 1.0 if "embed_tokens" in name else 1.5 / math.sqrt(fan_in)
                p.copy_(torch.randn(p.shape, generator=g) * std)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            # norm weights stay at their init (ones)


def tiny_qwen2vl(seed: int = 0, words: Sequence[str] = ()):
    """(model, processor): Qwen2VLForConditionalGeneration at toy size (2 text layers, hidden 32, one
    vision block of width 32; patch 14, merge 2 as the real one) and a real Qwen2VLProcessor.
    `words`: extra single-token words (e.g. `ALIGNMENT_LABELS`), see `tiny_tokenizer`."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    processor = tiny_processor(words)
    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            bos_token_id=None,
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=1,
            embed_dim=32,
            hidden_size=32,
            num_heads=2,
            mlp_ratio=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    model = Qwen2VLForConditionalGeneration(config)
    _reinit(model, seed)
    return model.eval(), processor


def save_tiny_rater(folder: str | Path, seed: int = 0, words: Sequence[str] = ()) -> str:
    """Write the tiny rater (weights, config, processor, tokenizer, chat template) to `folder`.
    `words=ALIGNMENT_LABELS` makes "Yes" / "No" single tokens, so that it can answer the alignment."""
    model, processor = tiny_qwen2vl(seed, words)
    model.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return str(folder)
