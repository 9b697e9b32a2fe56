"""The human study's on-disk contract (docs/human_study.md): one definition for the sampler, the
annotation server and the agreement analysis.

    <study>/study.json              what was sampled from where (STUDY_FILE)
    <study>/pairs.parquet           one row per sampled pair (PAIRS): prompt, media, the raters' votes
    <study>/media/<pair_id>_<a|b>.<ext>  the two images or videos of each pair, copied
    <study>/votes/<annotator>.jsonl one line per acknowledged vote (VOTE_FIELDS), appended and fsynced

Sides are "a" and "b" (for a built dataset a is the dataset's winner); the page shows them left or
right in an order drawn per annotator and pair, and every vote records which side was on the left.
A rater's vote column holds +1 (prefers a), -1 (prefers b), 0 (no preference) or null (no verdict).
"""
from __future__ import annotations

import re

import pyarrow as pa

STUDY_FILE = "study.json"
PAIRS_FILE = "pairs.parquet"
MEDIA_DIR = "media"
VOTES_DIR = "votes"
STUDY_VERSION = 1

ANNOTATOR_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}\Z")  # also the votes file's name: never a path
PAIR_ID = re.compile(r"^[0-9a-f]{16}\Z")
SIDES = ("a", "b")
CHOICES = ("left", "right", "tie", "skip")  # keys: arrow left, arrow right, arrow down, arrow up
PREFERRED = ("a", "b", "tie")  # what a vote means in sides; a skip prefers nothing (null)

#: Raters a study can hold votes of, in report order: the five reward models, their unanimous rule,
#: the VLM, and (for an audited dataset) its own human label.
RATERS = ("pickscore", "hpsv21", "imagereward", "clipscore", "aesthetic", "unanimous", "vlm", "label")


def vote_column(rater: str) -> str:
    return f"vote_{rater}"


def pairs_schema(raters: tuple[str, ...] | list[str]) -> pa.Schema:
    return pa.schema(
        [
            ("pair_id", pa.string()),
            ("category", pa.string()),
            ("modality", pa.string()),
            ("prompt", pa.string()),
            ("media_a", pa.string()),  # relative to the study folder
            ("media_b", pa.string()),
            ("source_id", pa.string()),  # the pair's id (build) or file:row (audit) in its source
        ]
        + [(vote_column(r), pa.int8()) for r in raters]
    )


#: The fields of one line of votes/<annotator>.jsonl.
VOTE_FIELDS = (
    "annotator",  # the annotator id (ANNOTATOR_ID)
    "seq",  # position in the annotator's sequence (0-based)
    "pair_id",
    "repeat",  # true: this position repeats a pair shown earlier in the sequence (self-consistency)
    "left",  # the side shown on the left: "a" or "b"
    "choice",  # CHOICES
    "preferred",  # "a", "b", "tie", or null for a skip
    "ms",  # milliseconds the pair was on screen before the vote (from the page; informative)
    "time",  # server time of the vote, ISO 8601 UTC
)

MAX_BODY_BYTES = 4096  # a vote or a login is a few dozen bytes; anything larger is refused (413)
