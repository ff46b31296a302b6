"""What every command line shares: the one place that turns expected failures into one line and an exit code."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import traceback
from collections.abc import Callable

from cleverscore.errors import CleverError, named

_received_signal: int | None = None


def _interrupt(signum: int, _frame: object) -> None:
    # SIGTERM would otherwise kill the process without running `finally` blocks and atexit
    # handlers, which are what unlink shared memory and remove temporary files. The signal is
    # remembered because the exception raised here can surface wrapped in another one when it
    # lands inside library code (TensorFlow's tracer turns it into a SystemError).
    global _received_signal
    _received_signal = signum
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a command-line `main`, mapping expected failures to `error: ...` and an exit code.

    The traceback is printed only when `--debug` is among the arguments.
    """
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        code = main(args)
    except CleverError as err:
        if debug:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        code = err.exit_code
    except BaseException:
        if _received_signal is None:
            raise
        if debug:
            traceback.print_exc()
        print(f"error: interrupted by {signal.Signals(_received_signal).name}", file=sys.stderr)
        code = 128 + _received_signal
    sys.stdout.flush()
    sys.exit(code or 0)


def quiet_tensorflow() -> None:
    """Keep TensorFlow's C++ start-up chatter out of the user's logs (set before importing TF)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def flag_names(parser: argparse.ArgumentParser, **extra: str) -> dict[str, str]:
    """Parameter name -> the flag a user types (`batch_size` -> `-b/--batch_size`), from a parser.

    `extra` maps library parameters whose names differ from the flags' (`nsamps="-N/--Nsamps"`).
    """
    names = {a.dest: "/".join(a.option_strings) for a in parser._actions if a.option_strings}
    return {**names, **extra}


@contextlib.contextmanager
def flags_named(names: dict[str, str]):
    """Re-raise the library's errors with the parameters they name written as command-line flags."""
    try:
        yield
    except CleverError as err:
        renamed = named(err, names)
        if renamed is None:
            raise
        raise renamed from err
