"""What every backend of the VLM rater shares: the question, the media layout, and the maths.

The rater is asked one pairwise question, "which of A and B is better at <category rubric> for
<prompt>? Answer with A or B.", with candidate A's media first and candidate B's second (a video as
`video_frames` labelled frames, in order). The answer is read from the log-probabilities of the two
labels at the FIRST generated position, renormalised over the two labels only:

    P(A) = e^lA / (e^lA + e^lB)

(a label missing from a top-k list counts as lA = -inf; both missing is an error). The question is
asked twice, the second time with the candidates swapped, and the two answers are combined into the
probability that the candidate shown first in the first order ("a") is the better one:

    p = (P(A | a, b) + 1 - P(A | b, a)) / 2
    position_consistency = 1 - |P(A | a, b) - (1 - P(A | b, a))|

The same backends also read a VQAScore alignment figure (Lin et al., ECCV 2024): one query per
item, its media then `ALIGNMENT_QUESTION`, and the answer is the full-vocabulary probability of
"Yes" at the first generated position, `P(Yes) = e^lYes` (NOT renormalised against "No").

This module holds no model code; the backends turn `Part` lists into label log-probabilities.
"""
from __future__ import annotations

import base64
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image

from schemas.categories import CATEGORIES

LABELS: tuple[str, str] = ("A", "B")

# VQAScore's question and answer (Lin et al., "Evaluating Text-to-Visual Generation with
# Image-to-Text Generation", ECCV 2024): `default_question_template` and `default_answer_template`
# ("Yes") of linzhiqiu/t2v_metrics, t2v_metrics/models/vqascore_models/clip_t5_model.py (the same
# strings in its gemini_model.py). "No" is asked for only to tell "P(Yes) below the top k" from "no
# answer at all"; it does not enter the score.
ALIGNMENT_QUESTION = 'Does this figure show "{}"? Please answer yes or no.'
ALIGNMENT_LABELS: tuple[str, str] = ("Yes", "No")

Part = tuple[Literal["text", "image"], str | Image.Image]  # ("text", str) or ("image", PIL RGB)


class RaterAnswerError(ValueError):
    """The rater's first-token distribution holds neither label: there is no answer to read."""


@dataclass(frozen=True)
class AlignmentQuery:
    """One generated image or video to score for prompt alignment (VQAScore). Media: one PIL image,
    or a video's frames in order."""

    item_id: str
    prompt: str
    media: list[Image.Image] = field(repr=False)


@dataclass(frozen=True)
class PairQuery:
    """One pair to rate. Media are lists of PIL images: one image, or a video's frames in order."""

    pair_id: str
    prompt: str
    category: str
    media_a: list[Image.Image] = field(repr=False)
    media_b: list[Image.Image] = field(repr=False)


@dataclass(frozen=True)
class Judgement:
    """The rater's verdict on a pair (a = `media_a`, b = `media_b`).

    p_first: swap-debiased P(a better) = (p_ab + 1 - p_ba) / 2.
    p_ab:    P(answer "A") when a is shown as A (first).
    p_ba:    P(answer "A") when b is shown as A (a second); 1 - p_ba is P(a better) from that order.
    position_consistency: 1 - |p_ab - (1 - p_ba)|; 1 means both orders agree exactly.
    """

    pair_id: str
    p_first: float
    p_ab: float
    p_ba: float
    position_consistency: float

    @property
    def p_first_when_second(self) -> float:
        """P(a better) read from the swapped order alone: 1 - P(A | b, a)."""
        return 1.0 - self.p_ba


# ---------------------------------------------------------------------------------------------- maths


def logsumexp(values: Iterable[float]) -> float:
    """log(sum(exp(v))) of plain floats; -inf for an empty or all -inf input."""
    vals = [float(v) for v in values]
    finite = [v for v in vals if v != -math.inf]
    if any(math.isnan(v) for v in vals):
        raise ValueError(f"NaN log-probability among {vals}")
    if not finite:
        return -math.inf
    m = max(finite)
    if m == math.inf:
        return math.inf
    return m + math.log(sum(math.exp(v - m) for v in finite))


def two_label_probability(logprob_a: float, logprob_b: float) -> float:
    """P(A) = e^lA / (e^lA + e^lB): the first-token distribution renormalised over the two labels.

    -inf stands for a label absent from a top-k list (its probability is then exactly 0 or 1);
    both absent raises `RaterAnswerError`."""
    la, lb = float(logprob_a), float(logprob_b)
    if math.isnan(la) or math.isnan(lb):
        raise ValueError(f"NaN label log-probability: lA={la}, lB={lb}")
    if la == -math.inf and lb == -math.inf:
        raise RaterAnswerError("neither label 'A' nor 'B' is among the first token's log-probabilities")
    if lb == -math.inf:
        return 1.0
    if la == -math.inf:
        return 0.0
    m = max(la, lb)
    ea, eb = math.exp(la - m), math.exp(lb - m)
    return ea / (ea + eb)


def swap_debias(p_ab: float, p_ba: float) -> tuple[float, float]:
    """Combine the two orders: (P(a better), position consistency).

    p_ab = P(A | a shown as A), p_ba = P(A | b shown as A)."""
    p = (p_ab + 1.0 - p_ba) / 2.0
    consistency = 1.0 - abs(p_ab - (1.0 - p_ba))
    return p, consistency


def judgement(pair_id: str, logprobs_ab: tuple[float, float], logprobs_ba: tuple[float, float]) -> Judgement:
    """A `Judgement` from the label log-probabilities (lA, lB) of both orders."""
    p_ab = two_label_probability(*logprobs_ab)
    p_ba = two_label_probability(*logprobs_ba)
    p, consistency = swap_debias(p_ab, p_ba)
    return Judgement(pair_id=pair_id, p_first=p, p_ab=p_ab, p_ba=p_ba, position_consistency=consistency)


def label_logprobs_from_top(
    top: Mapping[str, float] | Iterable[tuple[str, float]], labels: Sequence[str] = LABELS
) -> tuple[float, ...]:
    """One logprob per label, in order ((lA, lB) by default), from a top-k list of (token text, logprob).

    A token counts for a label when it equals the label up to surrounding whitespace (" A" is the
    same answer as "A"); several such tokens are summed in probability space (logsumexp). A label
    with no token in the list gets -inf."""
    items = top.items() if isinstance(top, Mapping) else top
    found: dict[str, list[float]] = {label: [] for label in labels}
    for token, logprob in items:
        key = str(token).strip()
        if key in found and logprob is not None:
            found[key].append(float(logprob))
    return tuple(logsumexp(found[label]) for label in labels)


def label_token_ids(tokenizer: Any, labels: Sequence[str] = LABELS) -> dict[str, list[int]]:
    """Token ids that spell each label as ONE token: the bare label ("A", what follows
    "<|im_start|>assistant\\n" in Qwen's chat template) and, where the vocabulary has it, the
    leading-space variant (" A"); the same for any labels ("Yes" / " Yes", "No" / " No"). Raises when a
    label has no single-token spelling or two labels share an id."""
    ids: dict[str, list[int]] = {}
    for label in labels:
        found: list[int] = []
        for variant in (label, " " + label):
            enc = tokenizer.encode(variant, add_special_tokens=False)
            if len(enc) == 1 and enc[0] not in found:
                found.append(int(enc[0]))
        if not found:
            raise ValueError(f"the tokenizer has no single token for the answer label {label!r}")
        ids[label] = found
    owner: dict[int, str] = {}
    shared = {i for label, found in ids.items() for i in found if owner.setdefault(i, label) != label}
    if shared:
        raise ValueError(f"answer labels share token ids {sorted(shared)}")
    return ids


def label_logprobs_from_ids(
    logprob_of: Mapping[int, float], ids: Mapping[str, Sequence[int]], labels: Sequence[str] = LABELS
) -> tuple[float, ...]:
    """One logprob per label, in order ((lA, lB) by default), from {token id: logprob} (a full
    vocabulary or a top-k dict) and the labels' token ids; absent ids are -inf."""
    return tuple(logsumexp(logprob_of[i] for i in ids[label] if i in logprob_of) for label in labels)


def yes_probability(logprob_yes: float, logprob_no: float) -> float:
    """VQAScore: P(Yes) = e^lYes, the full-vocabulary probability of "Yes" as the first answer token
    (t2v_metrics' score), NOT renormalised against "No".

    -inf stands for a label absent from a top-k list: "Yes" absent and "No" present is P(Yes) = 0;
    both absent raises `RaterAnswerError` (the model is not answering the question). NaN, or a
    value above 0 (not a log-probability), raises ValueError."""
    ly, ln = float(logprob_yes), float(logprob_no)
    if math.isnan(ly) or math.isnan(ln):
        raise ValueError(f"NaN label log-probability: lYes={ly}, lNo={ln}")
    if ly == -math.inf and ln == -math.inf:
        raise RaterAnswerError("neither label 'Yes' nor 'No' is among the first token's log-probabilities")
    if ly > 1e-6:
        raise ValueError(f"lYes={ly} is not a log-probability (above 0)")
    return min(1.0, math.exp(ly))


# ------------------------------------------------------------------------------------------ prompting


def question(category: str, prompt: str) -> str:
    """The pairwise question; the rubric is the category's (schemas/categories.py)."""
    try:
        rubric = CATEGORIES[category].rubric
    except KeyError:
        raise ValueError(f"unknown category {category!r}; expected one of {sorted(CATEGORIES)}") from None
    return f'Which of A and B is better at {rubric} for the prompt "{prompt}"? Answer with A or B.'


def resize_longest(image: Image.Image, size: int) -> Image.Image:
    """RGB copy of `image` resized (bicubic, aspect kept) so that its longest side is `size`."""
    image = image.convert("RGB")
    w, h = image.size
    if max(w, h) == size:
        return image
    scale = size / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    return image.resize(new, Image.BICUBIC)


def _media_parts(label: str, media: Sequence[Image.Image], image_size: int) -> list[Part]:
    if not media:
        raise ValueError(f"candidate {label} has no media")
    if len(media) == 1:
        return [("text", f"Image {label}:\n"), ("image", resize_longest(media[0], image_size)), ("text", "\n")]
    parts: list[Part] = [("text", f"Video {label} ({len(media)} frames, in order):\n")]
    for i, frame in enumerate(media, 1):
        parts += [("text", f"{label} frame {i}: "), ("image", resize_longest(frame, image_size)), ("text", "\n")]
    return parts


def build_parts(
    prompt: str, category: str, media_first: Sequence[Image.Image], media_second: Sequence[Image.Image], image_size: int
) -> list[Part]:
    """The user turn, in order: candidate A's media (labelled), candidate B's, then the question."""
    return [
        *_media_parts(LABELS[0], media_first, image_size),
        *_media_parts(LABELS[1], media_second, image_size),
        ("text", question(category, prompt)),
    ]


def alignment_question(prompt: str) -> str:
    """t2v_metrics' VQAScore question with the prompt inserted."""
    return ALIGNMENT_QUESTION.format(prompt)


def alignment_parts(prompt: str, media: Sequence[Image.Image], image_size: int) -> list[Part]:
    """The user turn of an alignment query: the media, then `ALIGNMENT_QUESTION`.

    One image is followed directly by the question (as t2v_metrics' Qwen2-VL wrapper sends it:
    image, then text); a video is its frames as images, in order, labelled like the pairwise
    layout but without a candidate letter."""
    if not media:
        raise ValueError("an alignment query has no media")
    if len(media) == 1:
        parts: list[Part] = [("image", resize_longest(media[0], image_size))]
    else:
        parts = [("text", f"Video ({len(media)} frames, in order):\n")]
        for i, frame in enumerate(media, 1):
            parts += [("text", f"frame {i}: "), ("image", resize_longest(frame, image_size)), ("text", "\n")]
    return [*parts, ("text", alignment_question(prompt))]


def _merge_text(parts: Sequence[Part]) -> list[Part]:
    out: list[Part] = []
    for kind, value in parts:
        if kind == "text" and out and out[-1][0] == "text":
            out[-1] = ("text", out[-1][1] + value)  # type: ignore[operator]
        else:
            out.append((kind, value))
    return out


def chat_messages(parts: Sequence[Part]) -> list[dict]:
    """One user message for a processor's chat template; images are `{"type": "image"}` placeholders
    (the pixels go to the processor / engine separately, in the same order)."""
    content = [
        {"type": "text", "text": value} if kind == "text" else {"type": "image"} for kind, value in _merge_text(parts)
    ]
    return [{"role": "user", "content": content}]


def images_of(parts: Sequence[Part]) -> list[Image.Image]:
    return [value for kind, value in parts if kind == "image"]  # type: ignore[misc]


def png_data_url(image: Image.Image) -> str:
    """A lossless `data:image/png;base64,...` URL of the image (OpenAI-style image_url)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG", optimize=False, compress_level=6)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def openai_messages(parts: Sequence[Part]) -> list[dict]:
    """The same user turn as OpenAI chat content parts, images as base64 PNG data URLs."""
    content = [
        {"type": "text", "text": value}
        if kind == "text"
        else {"type": "image_url", "image_url": {"url": png_data_url(value)}}  # type: ignore[arg-type]
        for kind, value in _merge_text(parts)
    ]
    return [{"role": "user", "content": content}]
