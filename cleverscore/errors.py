"""Expected failures: a message the user can act on, and the exit code a command line gives it.

Library code raises these with a message about its parameters (`order must be 1 or 2`); the
command lines turn them into one `error: ...` line (cli/common.py).
"""

from __future__ import annotations

import re

USAGE_ERROR = 2
RUNTIME_ERROR = 1


class CleverError(Exception):
    """A failure the user can act on: printed as `error: <message>` without a traceback.

    A message names the parameters it speaks of in backticks (`batch_size`), so that a command
    line can write them as the flags its user typed (see `named`).
    """

    exit_code = RUNTIME_ERROR


class UsageError(CleverError):
    """Bad parameters or bad input files: exit code 2."""

    exit_code = USAGE_ERROR


def named(err: CleverError, names: dict[str, str]) -> CleverError | None:
    """`err` with each backticked parameter it names written as the caller names it; None if it names none.

    A command line passes its flags (`{"batch_size": "-b/--batch_size"}`), so that its user reads
    `lower -b/--batch_size` where a library caller reads ``lower `batch_size` ``.
    """
    message = str(err)
    renamed = re.sub(r"`(\w+)`", lambda m: names.get(m.group(1), m.group(0)), message)
    if renamed == message:
        return None
    return type(err)(renamed)
