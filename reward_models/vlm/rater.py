"""`VLMRater`: asks a backend the pairwise question in both orders and combines the answers."""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from reward_models.vlm.prompting import Judgement, PairQuery, Part, build_parts, judgement

if TYPE_CHECKING:
    from schemas.config import JudgeConfig


def images_per_query(cfg: JudgeConfig) -> int:
    """Images in one pairwise query at most: two videos of `video_frames` frames (an image pair is 2).
    vLLM's `limit_mm_per_prompt={"image": ...}` must allow it (8 frames per video: 16)."""
    return 2 * cfg.video_frames


class LabelBackend(Protocol):
    """Anything that turns user turns into the first generated token's (lA, lB) log-probabilities."""

    def label_logprobs(self, queries: Sequence[list[Part]]) -> list[tuple[float, float]]:
        """One (logprob of "A", logprob of "B") per query, in order; -inf for a label not seen."""
        ...


class VLMRater:
    """Pairwise VLM rater: `rate(pairs)` returns swap-debiased judgements.

    Every pair becomes two queries, (a, b) and (b, a); all 2N queries go to the backend in ONE call,
    interleaved pair by pair (so the two orders of a pair, which have the same length, batch together).
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
