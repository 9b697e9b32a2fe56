"""Arrow schemas of the stage tables (docs/architecture.md, "Tables"): the one definition every stage uses."""
from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

REWARD_MODEL_NAMES: tuple[str, ...] = ("pickscore", "hpsv21", "imagereward", "clipscore", "aesthetic")
# Weights-free video metrics (reward_models/video.py); informative, they do not vote in pairing.
VIDEO_METRIC_NAMES: tuple[str, ...] = ("temporal_flicker", "motion_smoothness", "dynamic_degree", "subject_consistency")

PROMPTS = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("category", pa.string()),
        ("modality", pa.string()),
        ("prompt", pa.string()),
        ("source", pa.string()),
    ]
)

CANDIDATES = pa.schema(
    [
        ("candidate_id", pa.string()),
        ("prompt_id", pa.string()),
        ("category", pa.string()),
        ("modality", pa.string()),
        ("generator", pa.string()),
        ("seed", pa.int64()),
        ("params", pa.string()),  # canonical json of the sampling settings
        ("media_path", pa.string()),  # relative to the build folder; null when failed
        ("sha256", pa.string()),
        ("phash", pa.string()),  # 64-bit DCT pHash as 16 hex digits per hashed frame (pipeline/phash.py); null when failed
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("num_frames", pa.int32()),  # 1 for images
        ("fps", pa.float32()),  # null for images
        ("status", pa.string()),  # "ok" or "failed"
        ("reason", pa.string()),  # why it failed; null when ok
    ]
)


COMBINED_ADVANTAGE = "combined_advantage"  # mean of the reward models' advantages (video metrics excluded)


def scores_schema(scorers: Sequence[str]) -> pa.Schema:
    """One float per scorer plus the prompt group's mean/std and the group-relative advantage, and the
    reward models' combined advantage (one number a GRPO-style trainer can rank a group by)."""
    fields = [
        ("candidate_id", pa.string()),
        ("prompt_id", pa.string()),
        ("category", pa.string()),
        ("modality", pa.string()),
    ]
    for s in scorers:
        fields += [
            (s, pa.float32()),
            (f"{s}_group_mean", pa.float32()),
            (f"{s}_group_std", pa.float32()),
            (f"{s}_advantage", pa.float32()),
        ]
    return pa.schema(fields + [(COMBINED_ADVANTAGE, pa.float32()), ("reason", pa.string())])


def raw_scores_schema(scorers: Sequence[str]) -> pa.Schema:
    """What the score actors emit, before the group statistics are added. `reason`: why a candidate
    has no scores (corrupt_media, failed: docs/architecture.md, "Errors"); null when scored."""
    return pa.schema(
        [("candidate_id", pa.string()), ("prompt_id", pa.string()), ("category", pa.string()), ("modality", pa.string())]
        + [(s, pa.float32()) for s in scorers]
        + [("reason", pa.string())]
    )


def pairs_schema(scorers: Sequence[str]) -> pa.Schema:
    return pa.schema(
        [
            ("pair_id", pa.string()),  # null for pairs the pair stage drops: (winner_id, loser_id) identifies them
            ("prompt_id", pa.string()),
            ("category", pa.string()),
            ("modality", pa.string()),
            ("winner_id", pa.string()),
            ("loser_id", pa.string()),
        ]
        + [(f"margin_{s}", pa.float32()) for s in scorers]
        + [
            ("agree", pa.int32()),  # how many reward models prefer the winner
            ("n_scorers", pa.int32()),
            ("kept", pa.bool_()),
            ("drop_reason", pa.string()),  # null when kept
        ]
    )


JUDGEMENTS = pa.schema(
    [
        ("pair_id", pa.string()),
        ("category", pa.string()),
        ("rater", pa.string()),
        ("p_winner", pa.float32()),  # swap-debiased P(winner better); null when the rater gave no answer
        ("p_winner_first", pa.float32()),  # winner shown as A
        ("p_winner_second", pa.float32()),  # winner shown as B
        ("position_consistency", pa.float32()),
        ("reason", pa.string()),  # why there is no answer (vlm_no_label, corrupt_media, failed); null otherwise
    ]
)

# The VLM rule's decision per judged pair (pipeline/select.py applies it).
JUDGE_KEEPS = pa.schema([("pair_id", pa.string()), ("kept", pa.bool_()), ("drop_reason", pa.string())])

# Consistent pairs the select stage did not take, with the reason.
DROPPED = pa.schema([("pair_id", pa.string()), ("category", pa.string()), ("reason", pa.string())])


# One row per written shard: the write stage's output table and the manifests' source.
SHARD_INDEX = pa.schema([
    ("modality", pa.string()), ("index", pa.int64()), ("name", pa.string()), ("samples", pa.int64()),
    ("bytes", pa.int64()), ("sha256", pa.string()), ("sidecar", pa.string()), ("sidecar_sha256", pa.string()),
    ("counts", pa.string()),  # canonical json: categories, winner generators (by category), agreement
])


def selected_schema(scorers: Sequence[str]) -> pa.Schema:
    base = pairs_schema(scorers)
    return pa.schema(
        list(base)
        + [
            ("prompt", pa.string()),
            ("p_vlm", pa.float32()),  # null when no VLM rater is configured
            ("split", pa.string()),
            # sample order: shards hold a modality's pairs sorted by (sort_key, pair_id): seeded, interleaved
            # across categories in proportion to their sizes (docs/selection.md)
            ("sort_key", pa.float64()),
            # 0: a reader presenting pairs as image_0/image_1 shows the winner first; 1: second. Balanced per
            # category (docs/selection.md); shards keep win/lose members, this only fixes an A/B orientation.
            ("winner_position", pa.int8()),
            # the shard json's winner / loser records (canonical json, with the media path for the writer)
            ("winner_record", pa.string()),
            ("loser_record", pa.string()),
        ]
    )


# `cli.py eval`: the VLM's VQAScore-style alignment of one candidate with its prompt (docs/eval.md).
ALIGNMENT = pa.schema([
    ("candidate_id", pa.string()),
    ("category", pa.string()),
    ("rater", pa.string()),
    ("p_yes", pa.float32()),  # first-token P("Yes") over the full vocabulary; null when there is no answer
    ("reason", pa.string()),  # why there is no answer (vlm_no_label, corrupt_media, failed); null otherwise
])
