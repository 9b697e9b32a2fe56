"""The one rule that splits a tar member name into (sample key, suffix).

It is webdataset's `base_plus_ext` (webdataset 1.0, `tariterators.py`), restated so that readers
need not import webdataset: the key is everything up to the first dot of the file name (a dot in a
folder name does not count), the suffix everything after it, so `<key>.win.jpg` is the member
`win.jpg` of sample `<key>`. A name with no dot in its file name has no key: webdataset skips it.
Splitting exactly as webdataset does (as `datasets` and Ray Data do too) means vipo's readers see
the samples every other reader of the shards sees.
"""
from __future__ import annotations

import re

_MEMBER = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext, verbatim


def split_member(name: str) -> tuple[str, str] | None:
    """(key, suffix) of a tar member name, or None where webdataset's rule finds no key."""
    match = _MEMBER.match(name)
    return (match.group(1), match.group(2)) if match else None
