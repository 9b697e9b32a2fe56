"""The pairwise VLM rater (docs/vlm_rater.md)."""
from reward_models.vlm.prompting import (
    LABELS,
    Judgement,
    PairQuery,
    RaterAnswerError,
    build_parts,
    label_logprobs_from_top,
    label_token_ids,
    question,
    swap_debias,
    two_label_probability,
)
from reward_models.vlm.rater import LabelBackend, VLMRater
from reward_models.vlm.tiny import save_tiny_rater, tiny_qwen2vl

__all__ = [
    "LABELS",
    "Judgement",
    "LabelBackend",
    "PairQuery",
    "RaterAnswerError",
    "VLMRater",
    "build_parts",
    "label_logprobs_from_top",
    "label_token_ids",
    "question",
    "save_tiny_rater",
    "swap_debias",
    "tiny_qwen2vl",
    "two_label_probability",
]
