"""Deterministic row identities (docs/dataset_format.md, "Identifiers").

Every id is the first 16 hex digits of a sha256 over its parts joined by the unit separator, so ids
never contain a dot (WebDataset splits member names at the first dot) and resume can work by identity.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

ID_HEX = 16
_SEP = "\x1f"


def _digest(*parts: str) -> str:
    return hashlib.sha256(_SEP.join(parts).encode("utf-8")).hexdigest()[:ID_HEX]


def canonical_json(obj: Any) -> str:
    """The one JSON spelling used in ids and tables: sorted keys, no spaces."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def prompt_id(category: str, prompt: str) -> str:
    return _digest(category, prompt)


def candidate_id(prompt_id: str, generator: str, seed: int, params: dict[str, Any]) -> str:
    return _digest(prompt_id, generator, str(int(seed)), canonical_json(params))


def pair_id(winner_id: str, loser_id: str) -> str:
    return _digest(winner_id, loser_id)


def derive_seed(*parts: str) -> int:
    """A 31-bit seed derived from identity, so a rerun makes the same pixels."""
    return int(hashlib.sha256(_SEP.join(parts).encode("utf-8")).hexdigest()[:8], 16) & 0x7FFFFFFF
