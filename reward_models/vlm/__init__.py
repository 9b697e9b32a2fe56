"""The pairwise VLM rater and its VQAScore alignment (docs/vlm_rater.md)."""
from reward_models.vlm.prompting import (
    ALIGNMENT_LABELS,
    ALIGNMENT_QUESTION,
    LABELS,
    AlignmentQuery,
    Judgement,
    PairQuery,
    RaterAnswerError,
    alignment_parts,
    build_parts,
    label_logprobs_from_ids,
    label_logprobs_from_top,
    label_token_ids,
    question,
    swap_debias,
    two_label_probability,
    yes_probability,
)
from reward_models.vlm.rater import LabelBackend, VLMRater
from reward_models.vlm.tiny import save_tiny_rater, tiny_qwen2vl

__all__ = [
    "ALIGNMENT_LABELS",
    "ALIGNMENT_QUESTION",
    "AlignmentQuery",
    "LABELS",
    "Judgement",
    "LabelBackend",
    "PairQuery",
    "RaterAnswerError",
    "VLMRater",
    "alignment_parts",
    "build_parts",
    "label_logprobs_from_ids",
    "label_logprobs_from_top",
    "label_token_ids",
    "question",
    "save_tiny_rater",
    "swap_debias",
    "tiny_qwen2vl",
    "two_label_probability",
    "yes_probability",
]
