"""Prompts: the built-in library (templates x vocabularies, `pipeline/prompt_vocab.py`) and user prompt files.

Library. Each template of a category spans a mixed-radix index space: one digit per vocabulary it uses
(fields sharing a vocabulary take distinct entries, so such a group is one digit over ordered choices).
Index -> prompt is a bijection (the vocabularies are checked to make distinct prompts), so a category
holds exactly `capacity(category) + held_out_capacity(category)` prompts. `iter_prompts` walks every
template's index space in a seeded pseudo-random order (a keyed Feistel permutation with cycle walking,
vectorised with numpy), taking templates round-robin in a seeded order per round, so the first `n`
prompts mix all the kinds of prompt of a category evenly. Everything is keyed by sha256 (and the raw PCG64 bit stream, which numpy
keeps stable): the same seed gives the same order in any process, independent of `hash()`.

Held out. One prompt in `HELD_OUT_PER_TEMPLATE_DIVISOR` of every template is set aside for evaluation,
independently of any seed: with h = size // divisor and a permutation pi keyed by (category, template),
the indices i with pi(i) < h. `iter_prompts` skips them (so `capacity` counts the rest), `iter_held_out`
and `held_out_prompts` walk only them (`held_out_capacity` of them).

Prompt files. `load_prompt_files` reads .txt / .jsonl / .csv / .parquet files of (category, prompt),
reports every bad row as one line `file:line: what is wrong` and keeps the good ones.
"""
from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import math
import re
import string
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.prompt_vocab import TEMPLATES, VOCAB
from schemas.categories import CATEGORIES, modality_of
from schemas.errors import VipoError
from schemas.ids import prompt_id
from schemas.tables import PROMPTS

MAX_PROMPT_CHARS = 2000
MAX_LINE_CHARS = 1 << 20  # a jsonl line is one prompt and its category

# --------------------------------------------------------------------------------------------------
# articles

_ARTICLE = re.compile(r"\b([Aa])n? (?=([\w'-]+))")
_AN_ALWAYS = ("hour", "honest", "honour", "honor", "heir", "8", "11", "18")
_A_ALWAYS = ("one", "once", "eu", "ewe", "uni", "use", "usu", "uku", "ute", "ura", "uri")


def _article(match: re.Match) -> str:
    word = match.group(2).lower()
    if word.startswith(_AN_ALWAYS):
        an = True
    elif word.startswith(_A_ALWAYS):
        an = False
    else:
        an = word[0] in "aeiou"
    return match.group(1) + ("n " if an else " ")


def fix_articles(text: str) -> str:
    """'a apple' -> 'an apple', 'an pear' -> 'a pear'; text inside double quotes is left as written."""
    parts = text.split('"')
    parts[::2] = [_ARTICLE.sub(_article, p) for p in parts[::2]]
    return '"'.join(parts)


# --------------------------------------------------------------------------------------------------
# templates

_FIELD = re.compile(r"([a-z_]*[a-z])(\d*)")
_TRAILING_ARTICLE = re.compile(r"(?:^|(?<=\s))([Aa])n? $")


def _vocab_name(field_name: str) -> str:
    m = _FIELD.fullmatch(field_name)
    if m is None:
        raise ValueError(f"bad template field {field_name!r}")
    return m.group(1)


def _with_article(value: str, capital: bool) -> str:
    """'orange' -> 'an orange', the article that the start of `value` needs."""
    return fix_articles(("A" if capital else "a") + " " + value)


@dataclass(frozen=True)
class Template:
    """One format string; `render(i)` for `0 <= i < size` are its prompts, all distinct.

    Parsing compiles the template for fast rendering: its literal text is article-fixed once, and an
    article right before a field ("a {colour} ...") moves into a per-entry copy of that field's
    vocabulary ("an orange", "a red"), so rendering is a positional `str.format` without regexes.
    """

    text: str
    groups: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]  # (field names, vocabulary), one digit each
    size: int
    fmt: str  # the compiled positional format string
    slots: tuple[tuple[str, np.ndarray], ...]  # per position: (field name, its values as an object array)

    @classmethod
    def parse(cls, text: str) -> Template:
        pieces: list[str] = []
        slot_keys: list[tuple[str, str]] = []  # (field, article "", "a" or "A")
        in_quote = False
        for literal, name, spec, conv in string.Formatter().parse(text):
            if spec or conv:
                raise ValueError(f"template {text!r}: no format specs or conversions")
            parts = literal.split('"')
            for k in range(len(parts)):
                if not (in_quote ^ (k % 2 == 1)):  # outside quotes
                    parts[k] = _ARTICLE.sub(_article, parts[k])
            in_quote ^= len(parts) % 2 == 0
            literal = '"'.join(parts)
            article = ""
            if name is not None and not in_quote:
                m = _TRAILING_ARTICLE.search(literal)
                if m:
                    article, literal = m.group(1), literal[: m.start()]
            pieces.append(literal.replace("{", "{{").replace("}", "}}"))
            if name is not None:
                key = (name, article)
                if key not in slot_keys:
                    slot_keys.append(key)
                pieces.append("{" + str(slot_keys.index(key)) + "}")
        names = list(dict.fromkeys(n for n, _ in slot_keys))
        by_vocab: dict[str, list[str]] = {}
        for name in names:
            vocab = _vocab_name(name)
            if vocab not in VOCAB:
                raise ValueError(f"template {text!r}: no vocabulary {vocab!r}")
            by_vocab.setdefault(vocab, []).append(name)
        groups = tuple((tuple(fs), VOCAB[v]) for v, fs in by_vocab.items())
        size = math.prod(math.perm(len(vocab), len(fs)) for fs, vocab in groups)
        slots = []
        for name, article in slot_keys:
            vocab = VOCAB[_vocab_name(name)]
            values = [_with_article(v, article == "A") for v in vocab] if article else list(vocab)
            slots.append((name, np.array(values, dtype=object)))
        return cls(text, groups, size, "".join(pieces), tuple(slots))

    def digits(self, index: np.ndarray) -> dict[str, np.ndarray]:
        """Each field's vocabulary position for prompts `index` (mixed radix; a group of fields that
        share a vocabulary is one digit over ordered choices of distinct entries)."""
        rem = np.asarray(index, dtype=np.int64).copy()
        if rem.size and (rem.min() < 0 or rem.max() >= self.size):
            raise IndexError(f"template index out of range(0, {self.size})")
        out: dict[str, np.ndarray] = {}
        for fields, vocab in self.groups:
            taken: list[np.ndarray] = []
            for j, f in enumerate(fields):
                m = len(vocab) - j
                r = rem % m
                rem //= m
                if taken:  # the r-th entry not taken yet: step over the taken ones, smallest first
                    for t in np.sort(np.stack(taken), axis=0):
                        r = r + (r >= t)
                taken.append(r)
                out[f] = r
        return out

    def render_many(self, index: np.ndarray) -> list[str]:
        d = self.digits(index)
        columns = [values[d[name]] for name, values in self.slots]
        fmt = self.fmt.format
        return [fmt(*row) for row in zip(*columns)]

    def render(self, index: int) -> str:
        return self.render_many(np.array([index]))[0]

    def values(self, index: int) -> dict[str, str]:
        """The plain field values of prompt `index` (for checks: `fix_articles(text.format(**values))`)."""
        d = self.digits(np.array([index]))
        return {f: vocab[int(d[f][0])] for fields, vocab in self.groups for f in fields}


@cache
def templates(category: str) -> tuple[Template, ...]:
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; expected one of {list(CATEGORIES)}")
    return tuple(Template.parse(t) for t in TEMPLATES[category])


# One prompt in this many of every template is held out for evaluation (`cli.py eval`): never drawn by a
# build, whatever its seed. A template of fewer than this many prompts holds none out.
HELD_OUT_PER_TEMPLATE_DIVISOR = 1000


def capacity(category: str) -> int:
    """How many distinct prompts a build can draw for a category (the library less its held-out part)."""
    return sum(t.size - h for t, (h, _) in zip(templates(category), _held_out(category)))


def held_out_capacity(category: str) -> int:
    """How many prompts of a category are held out for evaluation (`iter_held_out`, `held_out_prompts`)."""
    return sum(h for h, _ in _held_out(category))


def held_out_indices(category: str, template: int) -> np.ndarray:
    """The held-out indices of template number `template` of `templates(category)`, sorted (int64)."""
    h, perm = _held_out(category)[template]
    if not h:
        return np.zeros(0, dtype=np.int64)
    return np.sort(perm.invert(np.arange(h, dtype=np.int64)))


# --------------------------------------------------------------------------------------------------
# seeded permutation of 0..n-1

_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_S29, _S32 = np.uint64(29), np.uint64(32)


class Permutation:
    """A keyed pseudo-random bijection of range(n): a 4-round Feistel network on the smallest even
    number of bits that covers n, with cycle walking for the values that land past n."""

    CHUNK = 4096

    def __init__(self, n: int, key: str):
        if n < 1:
            raise ValueError("a permutation needs n >= 1")
        self.n = n
        bits = max(2, (n - 1).bit_length())
        bits += bits % 2
        self._half = np.uint64(bits // 2)
        self._mask = np.uint64((1 << (bits // 2)) - 1)
        digest = hashlib.sha256(key.encode("utf-8")).digest()
        self._keys = [np.uint64(int.from_bytes(digest[8 * i : 8 * i + 8], "little")) for i in range(4)]

    def _round(self, half: np.ndarray, k: np.uint64) -> np.ndarray:
        f = (half ^ k) * _M1
        f ^= f >> _S29
        f *= _M2
        f ^= f >> _S32
        return f & self._mask

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self._half, x & self._mask
        for k in self._keys:
            left, right = right, left ^ self._round(right, k)
        return (left << self._half) | right

    def _decrypt(self, y: np.ndarray) -> np.ndarray:
        left, right = y >> self._half, y & self._mask
        for k in reversed(self._keys):
            left, right = right ^ self._round(left, k), left
        return (left << self._half) | right

    def _walk(self, x: np.ndarray, step) -> np.ndarray:
        """`step` applied until every value lands in range(n) (cycle walking)."""
        y = step(x)
        out = y >= self.n
        while out.any():
            y[out] = step(y[out])
            out = y >= self.n
        return y

    def _values(self, values) -> np.ndarray:
        v = np.asarray(values)
        if v.dtype.kind not in "iu":
            raise TypeError(f"permutation values must be integers, got {v.dtype}")
        if v.size and (v.min() < 0 or v.max() >= self.n):
            raise IndexError(f"permutation value out of range(0, {self.n})")
        return v.astype(np.uint64)

    def take(self, start: int, stop: int) -> np.ndarray:
        """The permuted values at positions start..stop-1 (clipped to n), as uint64."""
        return self._walk(np.arange(start, min(stop, self.n), dtype=np.uint64), self._encrypt)

    def apply(self, values) -> np.ndarray:
        """The forward map on arbitrary values of range(n) (int64): `apply(arange(a, b)) == take(a, b)`."""
        return self._walk(self._values(values), self._encrypt).astype(np.int64)

    def invert(self, values) -> np.ndarray:
        """The inverse map (int64): `invert(apply(x)) == x` (Feistel decryption, rounds reversed, walked back)."""
        return self._walk(self._values(values), self._decrypt).astype(np.int64)

    def __iter__(self) -> Iterator[int]:
        for start in range(0, self.n, self.CHUNK):
            yield from self.take(start, start + self.CHUNK).tolist()


class _Stream:
    """One template's prompts in a seeded order, rendered a chunk at a time.

    `order` walks positions 0..n-1 in a seeded order and `part` turns a chunk of its values into the
    template indices to render (dropping some or mapping them), before rendering, so a dropped index
    costs no rendering. `order=None` is an empty stream.
    """

    def __init__(self, template: Template, order: Permutation | None, part=None):
        self.template, self.perm, self.part = template, order, part
        self.n = 0 if order is None else order.n
        self.next_start, self.chunk = 0, 256  # small first chunks: drawing a handful of prompts stays cheap
        self.buffer: list[str] = []
        self.pos = 0

    def refill(self) -> bool:
        while self.next_start < self.n:
            stop = self.next_start + self.chunk
            index = self.perm.take(self.next_start, stop).astype(np.int64)
            self.next_start, self.chunk = stop, min(self.chunk * 2, Permutation.CHUNK)
            if self.part is not None:
                index = self.part(index)
            if index.size:
                self.buffer, self.pos = self.template.render_many(index), 0
                return True
        return False


def _key(*parts: object) -> str:
    return "\x1f".join(["vipo-prompts", *map(str, parts)])


@cache
def _held_out(category: str) -> tuple[tuple[int, Permutation | None], ...]:
    """Per template of the category: (h, pi), h = size // HELD_OUT_PER_TEMPLATE_DIVISOR held-out prompts,
    those indices i with pi(i) < h for the seed-independent permutation pi (None when h == 0)."""
    out = []
    for t, template in enumerate(templates(category)):
        h = template.size // HELD_OUT_PER_TEMPLATE_DIVISOR
        out.append((h, Permutation(template.size, _key("held-out", category, t)) if h else None))
    return tuple(out)


def _drawable(h: int, perm: Permutation):
    """The `part` of a build's stream: the indices not held out (pi(i) >= h)."""
    return lambda index: index[perm.apply(index) >= h]


def _interleave(streams: list[_Stream], key: str) -> Iterator[str]:
    """The streams' prompts, round-robin: each round visits every stream with prompts left once, in a
    seeded order."""
    bits = np.random.PCG64(int.from_bytes(hashlib.sha256(key.encode()).digest()[:16], "little"))
    active = [True] * len(streams)
    n_active = len(streams)
    seen: set[str] = set()  # a guard only: the library's templates make distinct prompts
    while n_active:
        # 512 rounds at a time: each row is one round's order of the templates
        order = np.argsort(bits.random_raw((512, len(streams))), axis=1, kind="stable").ravel().tolist()
        for i in order:
            if not active[i]:
                continue
            s = streams[i]
            if s.pos >= len(s.buffer) and not s.refill():
                active[i] = False
                n_active -= 1
                continue
            text = s.buffer[s.pos]
            s.pos += 1
            if text not in seen:
                seen.add(text)
                yield text


def iter_prompts(category: str, seed: int) -> Iterator[str]:
    """Distinct prompts of a category in a seeded order; stops after `capacity(category)` prompts.

    Templates take turns: each round visits every template that has prompts left once, in a seeded
    order, so a prefix of any length mixes the kinds of prompt of the category evenly. The held-out
    prompts (`iter_held_out`) are skipped, whatever the seed.
    """
    streams = [
        _Stream(t, Permutation(t.size, _key(seed, category, i)), _drawable(h, pi) if h else None)
        for i, (t, (h, pi)) in enumerate(zip(templates(category), _held_out(category)))
    ]
    yield from _interleave(streams, _key(seed, category))


def iter_held_out(category: str, seed: int) -> Iterator[str]:
    """The held-out prompts of a category (never drawn by `iter_prompts`, whatever its seed) in a seeded
    order, templates taking turns as in `iter_prompts`; stops after `held_out_capacity(category)`."""
    streams = [
        _Stream(t, Permutation(h, _key("held-out", seed, category, i)), pi.invert) if h else _Stream(t, None)
        for i, (t, (h, pi)) in enumerate(zip(templates(category), _held_out(category)))
    ]
    yield from _interleave(streams, _key("held-out", seed, category))


def _table(categories: list[str], prompts: list[str], sources: list[str]) -> pa.Table:
    """PROMPTS table from parallel columns: the first row of each prompt_id kept, sorted by id."""
    first: dict[str, int] = {}
    for k, (category, text) in enumerate(zip(categories, prompts)):
        first.setdefault(prompt_id(category, text), k)
    keep = list(first.values())
    if len(keep) < len(prompts):
        categories, prompts, sources = ([col[k] for k in keep] for col in (categories, prompts, sources))
    modality = {c: modality_of(c) for c in set(categories)}
    table = pa.table(
        {
            "prompt_id": list(first),
            "category": categories,
            "modality": [modality[c] for c in categories],
            "prompt": prompts,
            "source": sources,
        },
        schema=PROMPTS,
    )
    return table.sort_by("prompt_id")


def _draw(counts: dict[str, int], seed: int, held_out: bool) -> pa.Table:
    categories: list[str] = []
    prompts: list[str] = []
    for category, n in counts.items():
        if held_out:
            have, draw, what = held_out_capacity(category), iter_held_out, "held-out prompts, the library holds out"
        else:
            have, draw, what = capacity(category), iter_prompts, "prompts, the library has"
        if n > have:
            raise ValueError(f"category {category!r}: asked for {n} {what} {have}")
        prompts += itertools.islice(draw(category, seed), n)
        categories += [category] * n
    return _table(categories, prompts, ["held_out" if held_out else "library"] * len(prompts))


def library_prompts(counts: dict[str, int], seed: int) -> pa.Table:
    """The `prompts` table: the first `counts[category]` prompts of each category, sorted by prompt_id."""
    return _draw(counts, seed, held_out=False)


def held_out_prompts(counts: dict[str, int], seed: int) -> pa.Table:
    """A `prompts` table of held-out prompts (source "held_out"), for evaluation: the first
    `counts[category]` of `iter_held_out(category, seed)`, sorted by prompt_id."""
    return _draw(counts, seed, held_out=True)


# --------------------------------------------------------------------------------------------------
# user prompt files

PROMPT_FILE_TYPES = (".txt", ".jsonl", ".csv", ".parquet")


@dataclass
class PromptFileResult:
    table: pa.Table  # PROMPTS schema; source = the file's name; one row per prompt_id, sorted by it
    problems: list[str] = field(default_factory=list)  # one line per skipped row: "file:line: what is wrong"


class PromptFileError(VipoError, ValueError):
    """A prompt file that cannot be read at all: one line naming it."""


class _BadRow(Exception):
    pass


def _check(raw_category: object, raw_prompt: object, categories: Collection[str] | None) -> tuple[str, str]:
    """The (category, prompt) of a row, or _BadRow saying what is wrong with it."""
    for name, value in (("category", raw_category), ("prompt", raw_prompt)):
        if value is None:
            raise _BadRow(f"missing {name}")
        if not isinstance(value, str):
            raise _BadRow(f"{name} must be a string, got {type(value).__name__}")
    category, prompt = raw_category.strip(), raw_prompt.strip()
    if category not in CATEGORIES:
        raise _BadRow(f"unknown category {category!r}")
    if categories is not None and category not in categories:
        raise _BadRow(f"category {category!r} is not one of the requested categories {sorted(categories)}")
    if not prompt:
        raise _BadRow("empty prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise _BadRow(f"prompt is {len(prompt)} characters long, more than {MAX_PROMPT_CHARS}")
    return category, prompt


def _lines(path: Path, newline: str | None = None) -> list[str]:
    """The file's lines (split at \\n, \\r or \\r\\n only, so line numbers match an editor's)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PromptFileError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise PromptFileError(f"{path}: line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    return io.StringIO(text, newline=newline).readlines()


def _txt_rows(path: Path) -> Iterator[tuple[str, object, object]]:
    for n, line in enumerate(_lines(path), start=1):
        line = line.rstrip("\n")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if "\t" not in line:
            yield str(n), _BadRow("expected 'category<TAB>prompt'"), None
            continue
        category, prompt = line.split("\t", 1)
        yield str(n), category, prompt


def _jsonl_rows(path: Path) -> Iterator[tuple[str, object, object]]:
    for n, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        if len(line) > MAX_LINE_CHARS:
            yield str(n), _BadRow(f"line is {len(line):,} characters long, more than {MAX_LINE_CHARS:,}"), None
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield str(n), _BadRow(f"bad JSON ({e.msg} at column {e.colno})"), None
            continue
        except RecursionError:
            yield str(n), _BadRow("JSON nested too deeply"), None
            continue
        if not isinstance(obj, dict):
            yield str(n), _BadRow(f"expected a JSON object, got {type(obj).__name__}"), None
            continue
        missing = [k for k in ("prompt", "category") if k not in obj]
        if missing:
            yield str(n), _BadRow("missing field " + " and ".join(repr(k) for k in missing)), None
            continue
        yield str(n), obj["category"], obj["prompt"]


def _csv_rows(path: Path) -> Iterator[tuple[str, object, object]]:
    lines = _lines(path, newline="")
    reader = csv.DictReader(lines)
    try:
        header = [h.strip() for h in (reader.fieldnames or [])]
    except csv.Error as e:
        raise PromptFileError(f"{path}: after line {reader.line_num}: {e}") from None
    missing = [k for k in ("prompt", "category") if k not in header]
    if missing:
        raise PromptFileError(f"{path}: the csv header {header} has no column " + " or ".join(repr(k) for k in missing))
    reader.fieldnames = header
    end = reader.line_num  # the last line of the header
    for row in _csv_records(reader, path):
        start, end = end + 1, reader.line_num  # a quoted field may span lines: report the first
        while start < end and not lines[start - 1].strip():  # blank lines before the record
            start += 1
        if None in row:
            yield str(start), _BadRow(f"{len(header) + len(row[None])} fields, the header has {len(header)}"), None
            continue
        if all(v is None or not v.strip() for v in row.values()):  # a line of spaces only
            continue
        missing = [k for k in ("prompt", "category") if row.get(k) is None]
        if missing:
            yield str(start), _BadRow("missing field " + " and ".join(repr(k) for k in missing)), None
            continue
        yield str(start), row["category"], row["prompt"]


def _csv_records(reader: csv.DictReader, path: Path) -> Iterator[dict]:
    """The reader's rows; a field past the csv module's limit ends the file with one line (it cannot resync)."""
    try:
        yield from reader
    except csv.Error as e:
        raise PromptFileError(f"{path}: after line {reader.line_num}: {e}") from None


def _parquet_rows(path: Path) -> Iterator[tuple[str, object, object]]:
    try:
        table = pq.read_table(path)
    except Exception as e:
        raise PromptFileError(f"{path}: not a readable parquet file ({e})") from None
    missing = [k for k in ("prompt", "category") if k not in table.column_names]
    if missing:
        raise PromptFileError(f"{path}: no column " + " or ".join(repr(k) for k in missing) + f" (has {table.column_names})")
    for k in ("prompt", "category"):
        t = table[k].type
        if pa.types.is_dictionary(t):  # e.g. a pandas categorical
            t = t.value_type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)):
            raise PromptFileError(f"{path}: column {k!r} must hold strings, not {table[k].type}")
    for n, (category, prompt) in enumerate(zip(table["category"].to_pylist(), table["prompt"].to_pylist())):
        yield f"row {n}", category, prompt


_READERS = {".txt": _txt_rows, ".jsonl": _jsonl_rows, ".csv": _csv_rows, ".parquet": _parquet_rows}
PROMPT_FILE_TYPES: tuple[str, ...] = tuple(_READERS)


def load_prompt_files(paths: list[str], categories: Collection[str] | None = None) -> PromptFileResult:
    """Read user prompt files into a PROMPTS table (source = file name).

    Bad rows (unknown or unrequested category, missing or empty prompt, longer than 2000 characters,
    bad JSON, a missing field) are skipped and reported, one line each: `file:line: what is wrong`
    (`file:row N: ...` for parquet, N counted from 0). A missing file, an unsupported extension or a
    file that cannot be read as its type at all (no `prompt`/`category` columns, not UTF-8) raise
    `ValueError`. A prompt given twice (same category and text) is kept once, the first time it appears.
    """
    files = [(str(p), Path(p)) for p in paths]
    for _, p in files:
        if p.suffix.lower() not in _READERS:
            raise PromptFileError(
                f"{p}: unsupported prompt file type {p.suffix or '(none)'!r}; "
                f"expected one of {', '.join(PROMPT_FILE_TYPES)}"
            )
        if not p.is_file():
            raise PromptFileError(f"prompt file not found: {p}")
    if categories is not None:
        unknown = sorted(set(categories) - set(CATEGORIES))
        if unknown:
            raise PromptFileError(f"unknown categories {unknown}; expected some of {list(CATEGORIES)}")
    categories_out: list[str] = []
    prompts: list[str] = []
    sources: list[str] = []
    problems: list[str] = []
    for name, p in files:
        for where, raw_category, raw_prompt in _READERS[p.suffix.lower()](p):
            try:
                if isinstance(raw_category, _BadRow):
                    raise raw_category
                category, prompt = _check(raw_category, raw_prompt, categories)
            except _BadRow as e:
                problems.append(f"{name}:{where}: {e}")
                continue
            categories_out.append(category)
            prompts.append(prompt)
            sources.append(p.name)
    return PromptFileResult(_table(categories_out, prompts, sources), problems)
