"""`VLMRater`: asks a backend the pairwise question in both orders and combines the answers; and,
from the same backend, the VQAScore alignment of single items (`alignment`)."""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from reward_models.vlm.prompting import (
    ALIGNMENT_LABELS,
    LABELS,
    AlignmentQuery,
    Judgement,
    PairQuery,
    Part,
    alignment_parts,
    build_parts,
    judgement,
    yes_probability,
)

if TYPE_CHECKING:
    from schemas.config import JudgeConfig


def images_per_query(cfg: JudgeConfig) -> int:
    """Images in one pairwise query at most: two videos of `video_frames` frames (an image pair is 2).
    vLLM's `limit_mm_per_prompt={"image": ...}` must allow it (8 frames per video: 16)."""
    return 2 * cfg.video_frames


class LabelBackend(Protocol):
    """Anything that turns user turns into the first generated token's label log-probabilities."""

    def label_logprobs(self, queries: Sequence[list[Part]], labels: Sequence[str] = LABELS) -> list[tuple[float, ...]]:
        """One tuple per query, in order, of one logprob per label, in the order of `labels`: the
        full-vocabulary log-probability of the label as the first generated token, summed
        (logsumexp) over its single-token spellings ("A" and " A"); -inf for a label not seen.
        The default labels are the pairwise ("A", "B"); the alignment asks ("Yes", "No")."""
        ...


class VLMRater:
    """Pairwise VLM rater: `rate(pairs)` returns swap-debiased judgements.

    Every pair becomes two queries, (a, b) and (b, a); all 2N queries go to the backend in ONE call,
    interleaved pair by pair (so the two orders of a pair, which have the same length, batch together).

    `alignment(items)` asks the same backend VQAScore's question, one query per item (no swap), and
    returns P("Yes") of the first token over the whole vocabulary.
    """

    def __init__(self, backend: LabelBackend, name: str, image_size: int = 448):
        self.backend = backend
        self.name = name  # written to the judgements' `rater` column
        self.image_size = int(image_size)

    @classmethod
    def from_config(cls, cfg: JudgeConfig, model_path: str, device: str | None = None) -> VLMRater:
        """Build the configured backend.

        `model_path` is the local folder or hub id for `transformers` / `vllm`, and the served model
        name for `openai`. `device` (transformers only) defaults to cuda when the config asks for GPUs.
        """
        if cfg.backend == "transformers":
            from reward_models.vlm.transformers_backend import TransformersBackend

            device = device or ("cuda" if cfg.resources.num_gpus > 0 else "cpu")
            backend: LabelBackend = TransformersBackend(
                model_path, dtype=cfg.dtype, device=device, batch_size=2 * cfg.resources.batch_size
            )
        elif cfg.backend == "vllm":
            from reward_models.vlm.vllm_backend import VLLMBackend

            backend = VLLMBackend(model_path, dtype=cfg.dtype, max_images=images_per_query(cfg))
        elif cfg.backend == "openai":
            from reward_models.vlm.openai_backend import OpenAIBackend

            if not cfg.base_url:
                raise ValueError("judge.base_url is required by the openai backend (e.g. http://localhost:8000/v1)")
            backend = OpenAIBackend(
                base_url=cfg.base_url,
                model=model_path,
                api_key=os.environ.get(cfg.api_key_env),
                timeout_s=cfg.timeout_s,
                max_retries=cfg.max_retries,
                max_images=images_per_query(cfg),
            )
        else:  # pragma: no cover - JudgeConfig's Literal already refuses this
            raise ValueError(f"unknown VLM backend {cfg.backend!r}")
        return cls(backend, name=f"{cfg.backend}:{cfg.model}", image_size=cfg.image_size)

    def queries(self, pair: PairQuery) -> tuple[list[Part], list[Part]]:
        """The two user turns of a pair: a shown as A, then b shown as A."""
        ab = build_parts(pair.prompt, pair.category, pair.media_a, pair.media_b, self.image_size)
        ba = build_parts(pair.prompt, pair.category, pair.media_b, pair.media_a, self.image_size)
        return ab, ba

    def rate(self, pairs: Sequence[PairQuery]) -> list[Judgement]:
        """One `Judgement` per pair, in order; `p_first` is P(media_a better), swap-debiased. A pair
        with no readable answer raises (see `rate_each` to get it back as a value instead)."""
        out = []
        for result in self.rate_each(pairs):
            if isinstance(result, Exception):
                raise result
            out.append(result)
        return out

    def rate_each(self, pairs: Sequence[PairQuery]) -> list[Judgement | ValueError]:
        """Like `rate`, but a pair whose answer cannot be read (`RaterAnswerError`: neither label among
        the first token's log-probabilities; NaN log-probabilities) is returned as its error, so one
        such pair costs only itself. Backend failures still raise."""
        if not pairs:
            return []
        queries: list[list[Part]] = []
        for pair in pairs:
            queries.extend(self.queries(pair))
        logprobs = self.backend.label_logprobs(queries)
        if len(logprobs) != len(queries):
            raise RuntimeError(f"backend answered {len(logprobs)} of {len(queries)} queries")
        out: list[Judgement | ValueError] = []
        for i, pair in enumerate(pairs):
            try:
                out.append(judgement(pair.pair_id, logprobs[2 * i], logprobs[2 * i + 1]))
            except ValueError as err:
                out.append(type(err)(f"pair {pair.pair_id}: {err}"))
        return out

    def alignment_query(self, item: AlignmentQuery) -> list[Part]:
        """The user turn of an alignment item: its media, then the VQAScore question."""
        return alignment_parts(item.prompt, item.media, self.image_size)

    def alignment(self, items: Sequence[AlignmentQuery]) -> list[float]:
        """VQAScore per item, in order: P("Yes") as the first answer token to `Does this figure show
        "<prompt>"? Please answer yes or no.` (full vocabulary, not renormalised). An item with no
        readable answer raises (see `alignment_each`)."""
        out = []
        for result in self.alignment_each(items):
            if isinstance(result, Exception):
                raise result
            out.append(result)
        return out

    def alignment_each(self, items: Sequence[AlignmentQuery]) -> list[float | ValueError]:
        """Like `alignment`, but an item whose answer cannot be read (`RaterAnswerError`: neither
        "Yes" nor "No" among the first token's log-probabilities; NaN log-probabilities) is returned
        as its error, naming the item. All items go to the backend in ONE call; backend failures raise."""
        if not items:
            return []
        queries = [self.alignment_query(item) for item in items]
        logprobs = self.backend.label_logprobs(queries, ALIGNMENT_LABELS)
        if len(logprobs) != len(queries):
            raise RuntimeError(f"backend answered {len(logprobs)} of {len(queries)} queries")
        out: list[float | ValueError] = []
        for item, (logprob_yes, logprob_no) in zip(items, logprobs):
            try:
                out.append(yes_probability(logprob_yes, logprob_no))
            except ValueError as err:
                out.append(type(err)(f"item {item.item_id}: {err}"))
        return out
