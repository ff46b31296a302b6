"""Expected failures: a message the user can act on, and the exit code a command line gives it.

Library code raises these with a message about its parameters (`order must be 1 or 2`); the
command lines turn them into one `error: ...` line (cli/common.py).
"""

from __future__ import annotations

USAGE_ERROR = 2
RUNTIME_ERROR = 1


class CleverError(Exception):
    """A failure the user can act on: printed as `error: <message>` without a traceback."""

    exit_code = RUNTIME_ERROR


class UsageError(CleverError):
    """Bad parameters or bad input files: exit code 2."""

    exit_code = USAGE_ERROR
