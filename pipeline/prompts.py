"""The prompt library: deterministic, deduplicated prompts per category from templates and vocabularies.

A template is a format string over named vocabularies; the library enumerates a seeded random walk over
the combinations, so `n` prompts of a category are always the same `n` prompts for the same seed.
"""
from __future__ import annotations

import itertools
import random
import re
import string
from collections.abc import Iterator

import pandas as pd
import pyarrow as pa

from schemas.categories import CATEGORIES, modality_of
from schemas.ids import prompt_id
from schemas.tables import PROMPTS

_V: dict[str, tuple[str, ...]] = {
    "subject": (
        "a lighthouse on a cliff", "a fox in the snow", "an old library", "a mountain lake", "a koi pond",
        "a desert caravan", "a glass greenhouse", "a tea house in the rain", "a sailing ship", "a city street at night",
        "a field of sunflowers", "a bowl of ramen", "a violin on a chair", "a steam train", "a hot air balloon",
    ),
    "style": (
        "oil painting", "watercolour", "35mm film photograph", "studio photograph", "ukiyo-e woodblock print",
        "art nouveau poster", "isometric 3d render", "charcoal sketch", "cinematic still", "pastel illustration",
    ),
    "lighting": (
        "golden hour light", "soft overcast light", "dramatic rim light", "neon glow", "candlelight",
        "blue hour", "volumetric fog and god rays", "harsh noon sun",
    ),
    "number": ("two", "three", "four", "five", "six"),
    "object": ("apples", "cats", "red balloons", "wooden chairs", "coffee cups", "paper boats", "candles", "books"),
    "thing": ("cube", "sphere", "teapot", "bicycle", "umbrella", "clock", "vase", "lamp", "guitar", "backpack"),
    "colour": ("red", "blue", "green", "yellow", "purple", "orange", "white", "black"),
    "relation": ("on top of", "to the left of", "to the right of", "under", "behind", "in front of", "next to"),
    "scene": (
        "a kitchen table", "a wooden desk", "a beach at sunset", "a snowy park", "a rooftop garden", "a market stall",
    ),
    "detail": (
        "wearing a striped scarf", "holding a blue umbrella", "with a small dog at its feet", "with three windows lit",
        "with a crescent moon above", "with exactly one red door",
    ),
    "person_detail": (
        "wearing a striped scarf", "holding a blue umbrella", "with a small dog at their feet", "wearing round glasses",
        "carrying a stack of three books", "with a red bicycle beside them",
    ),
    "text": ("OPEN", "VIPO", "Hello World", "Fresh Bread", "EXIT", "Moonlight Cafe", "SALE 50%", "No Parking"),
    "surface": (
        "a neon sign", "a chalkboard menu", "a shop window", "a hand-painted wooden sign", "a coffee mug",
        "a vintage poster", "a birthday cake", "a street banner",
    ),
    "person": (
        "an elderly fisherman", "a young violinist", "a woman with freckles", "a chef in a white jacket",
        "a smiling child", "a marathon runner", "a man with a grey beard", "a dancer",
    ),
    "framing": ("close-up portrait", "half-body portrait", "candid photo", "studio headshot", "environmental portrait"),
    "hands": ("hands folded", "waving one hand", "holding a cup with both hands", "pointing at the camera"),
    "motion": (
        "a dog running across a meadow", "waves crashing on rocks", "a dancer spinning", "leaves falling in the wind",
        "a cyclist riding down a hill", "a cat jumping onto a table", "a flag waving", "a ball bouncing down stairs",
    ),
    "camera": ("slow dolly in", "static camera", "tracking shot", "slow pan left", "aerial drone shot", "handheld"),
    "quality": ("sharp focus, 4k", "crisp details, stable lighting", "high detail, no flicker", "smooth and clean"),
    "sequence": (
        "a candle is lit and then blown out", "a flower bud opens into a bloom", "a car stops and a door opens",
        "a kettle boils and steam rises", "a child draws a circle and then colours it in", "the sun sets and stars appear",
    ),
}

TEMPLATES: dict[str, tuple[str, ...]] = {
    "aesthetics": ("{subject}, {style}, {lighting}", "{style} of {subject} under {lighting}"),
    "composition": (
        "{number} {object} {relation} a {colour} {thing}",
        "a {colour} {thing} {relation} a {colour2} {thing2}",
    ),
    "text_image_alignment": ("{subject} {detail}, {style}", "{person} {person_detail} in {scene}"),
    "text_rendering": ('{surface} that says "{text}"', 'the words "{text}" written on {surface}'),
    "portrait_quality": ("{framing} of {person}, {hands}, {lighting}", "{framing} of {person}, {lighting}"),
    "motion_quality": ("{motion}, {camera}", "{motion}, {camera}, {lighting}"),
    "visual_quality": ("{subject}, {camera}, {quality}", "{motion}, {quality}"),
    "video_text_alignment": ("{sequence}, {camera}", "{sequence} in {scene}"),
}

_ALIASES = {"colour2": "colour", "thing2": "thing"}


def _fields(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


_ARTICLE = re.compile(r"\b([Aa]) (?=[aeiou])")


def _render(template: str, rng: random.Random) -> str:
    text = template.format(**{f: rng.choice(_V[_ALIASES.get(f, f)]) for f in _fields(template)})
    return _ARTICLE.sub(r"\1n ", text)


def capacity(category: str) -> int:
    """Distinct prompts the templates of a category can make (an upper bound, before dedup)."""
    total = 0
    for t in TEMPLATES[category]:
        n = 1
        for f in _fields(t):
            n *= len(_V[_ALIASES.get(f, f)])
        total += n
    return total


def iter_prompts(category: str, seed: int) -> Iterator[str]:
    """Distinct prompts of a category, in a seeded order; stops when the templates are exhausted."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}")
    rng = random.Random(f"{seed}:{category}")
    seen: set[str] = set()
    templates = TEMPLATES[category]
    misses = 0
    for i in itertools.count():
        text = _render(templates[i % len(templates)], rng)
        if text in seen:
            misses += 1
            if misses > 50 * max(len(seen), 100):
                return
            continue
        misses = 0
        seen.add(text)
        yield text


def library_prompts(counts: dict[str, int], seed: int) -> pa.Table:
    """The `prompts` table: `counts[category]` prompts per category from the library."""
    rows = []
    for category, n in counts.items():
        texts = list(itertools.islice(iter_prompts(category, seed), n))
        if len(texts) < n:
            raise ValueError(f"category {category!r}: asked for {n} prompts, the library has {len(texts)}")
        for text in texts:
            rows.append(
                {
                    "prompt_id": prompt_id(category, text),
                    "category": category,
                    "modality": modality_of(category),
                    "prompt": text,
                    "source": "library",
                }
            )
    df = pd.DataFrame(rows, columns=PROMPTS.names).sort_values("prompt_id", kind="stable")
    return pa.Table.from_pandas(df, schema=PROMPTS, preserve_index=False)
