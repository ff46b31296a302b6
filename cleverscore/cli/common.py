"""What every command line shares: the one place that turns expected failures into one line and an exit code."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable

from cleverscore.errors import USAGE_ERROR, CleverError, named

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


def pool_cpu_memory() -> None:
    """Let TensorFlow keep freed CPU memory for reuse (its BFC allocator) unless the user chose otherwise.

    Without it every large tensor is a fresh mmap that the kernel zero-fills and unmaps again:
    measured on this 2-core CPU, a third of the sampling run's time and two thirds of the
    certifier's were system time (`bench/` numbers in README, Performance). It must be set before
    TensorFlow starts, so every command line sets it before importing TensorFlow.
    """
    os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")


def quiet_tensorflow(debug: bool = False) -> None:
    """Import TensorFlow with its C++ start-up chatter kept out of the user's terminal.

    TF_CPP_MIN_LOG_LEVEL only takes effect once absl's logging is set up, so the lines printed
    before that (`oneDNN custom operations are on`, `Could not find cuda drivers`, `All log
    messages before absl::InitializeLog()`, a failed cuInit on a machine without a GPU) are
    written straight to file descriptor 2: it is pointed at a temporary file while TensorFlow
    loads and looks for devices. With `debug` all of them show (TensorFlow's own default level); with a
    TF_CPP_MIN_LOG_LEVEL the user set, what that level lets through shows.
    If the import fails, what it printed is shown with the error.
    """
    pool_cpu_memory()
    if debug:
        return  # every line TensorFlow prints shows (which ones depends on the CPU and the devices)
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ or "tensorflow" in sys.modules:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as chatter:
        os.dup2(chatter.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # the cuInit attempt, and its message, happen here
        except BaseException:
            os.dup2(saved, 2)
            chatter.seek(0)
            sys.stderr.write(chatter.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


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


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one `error: ...` line (exit 2), as every other bad input's."""

    def error(self, message: str):
        self.exit(USAGE_ERROR, f"error: {message} (see {self.prog} --help)\n")


def number(minimum: float | None = None, maximum: float | None = None, *, above: float | None = None,
           below: float | None = None) -> Callable[[str], float]:
    """An argparse `type` for a float flag: finite, and inside the given bounds, or one clear error.

    NaN and infinities are refused whatever the bounds: no radius, tolerance or rate means them.
    """
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        bounds = ((minimum, ">=", value >= (minimum or 0)), (maximum, "<=", value <= (maximum or 0)),
                  (above, ">", value > (above or 0)), (below, "<", value < (below or 0)))
        for bound, says, ok in bounds:
            if bound is not None and not ok:
                raise argparse.ArgumentTypeError(f"must be {says} {bound:g}, got {text!r}")
        return value

    parse.__name__ = "number"  # argparse names the type in its messages
    return parse
