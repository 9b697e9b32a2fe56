"""Tokenizers built with no network: the real CLIP BPE, from the vocabulary shipped in open_clip's wheel.

`clip_tokenizer()` is the hub tokenizer (`openai/clip-vit-*`) as transformers builds it, cleaning
included: under transformers 5 that is NFC + white space + lower case, no ftfy and no HTML unescaping.
It stays that way because the toy generators use it as their pipelines' tokenizer; a scorer whose
reference tokenises with `clip.tokenize` adds `preprocess.openai_clip_clean` before it (CLIPScore)."""
from __future__ import annotations

import gzip
import json
import tempfile
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer

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
