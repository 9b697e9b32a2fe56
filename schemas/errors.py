"""The one base of vipo's expected failures (docs/reliability.md, "Errors").

An expected failure — a bad config or input file, a locked or full folder, a resource the cluster
lacks, a stage past its failure budget — is phrased as one line, `<file or key>: <what is wrong>`,
and the command line prints it as `error: <line>` with exit code 2 and no traceback. Anything that
is not a `VipoError` (or an operating-system error on a named path) is a bug and gets a traceback.
"""
from __future__ import annotations


class VipoError(Exception):
    """An expected failure whose message is one line naming the file, folder or key at fault."""
