"""Tokenizers built with no network: the real CLIP BPE (shipped inside open_clip's wheel) and a
small WordPiece vocabulary for BERT-style text towers of the tiny models."""
from __future__ import annotations

import gzip
import json
import tempfile
from functools import lru_cache
from pathlib import Path

from transformers import BertTokenizerFast, CLIPTokenizer

_CLIP_MERGES = 49152 - 256 - 2  # merges used by CLIP's BPE (as in open_clip and transformers)


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_clip_vocab(folder: str | Path) -> Path:
    """Write `vocab.json` + `merges.txt` of OpenAI CLIP's tokenizer from open_clip's packaged BPE file."""
    import open_clip

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1 : _CLIP_MERGES + 1]
    base = list(_bytes_to_unicode().values())
    vocab = base + [v + "</w>" for v in base] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder


@lru_cache(maxsize=1)
def clip_tokenizer() -> CLIPTokenizer:
    """OpenAI CLIP's tokenizer (vocab 49408, 77 tokens), identical to `openai/clip-vit-*`'s."""
    with tempfile.TemporaryDirectory() as tmp:
        write_clip_vocab(tmp)
        vocab = json.loads(Path(tmp, "vocab.json").read_text())
        merges = [tuple(m.split()) for m in Path(tmp, "merges.txt").read_text().splitlines()[1:] if m]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def wordpiece_tokenizer(corpus: list[str], vocab_size: int = 2000, model_max_length: int = 512) -> BertTokenizerFast:
    """An uncased BERT WordPiece tokenizer trained on `corpus` (stands in for bert-base-uncased offline)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece()
    return BertTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
    )
