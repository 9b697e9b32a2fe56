"""Agreement between raters' votes, shared by the dataset card and the audit report so that both
mean the same thing by "agreement matrix"."""
from __future__ import annotations

import numpy as np

_CHUNK = 1 << 20  # rows per matrix product: float32 counts stay exact below 2**24


def vote_agreement(votes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`votes`: (n, k) of +1 / -1 / 0 (0: the rater prefers neither). Returns (share, both): for each pair
    of raters the share of rows, among those on which both decide, where they vote the same, and how many
    rows that is. NaN where they never both decide; the diagonal is 1 wherever a rater decides at all.

    With +1/-1/0 votes, v_i * v_j is +1 on agreement, -1 on disagreement and 0 when either abstains, so
    (|V|'|V| + V'V) / 2 counts agreements in two matrix products.
    """
    n, k = votes.shape
    same, both = np.zeros((k, k), np.int64), np.zeros((k, k), np.int64)
    for start in range(0, n, _CHUNK):
        chunk = np.asarray(votes[start : start + _CHUNK], dtype=np.float32)
        signed, decided = chunk.T @ chunk, np.abs(chunk).T @ np.abs(chunk)
        both += decided.astype(np.int64)
        same += ((decided + signed) / 2).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(both > 0, same / np.maximum(both, 1), np.nan)
    return share, both
