"""What every command shares: --log-level, argument types, quiet TensorFlow start-up, and exit codes.

Exit codes: 0 done; 2 bad input a user can fix (config, paths, data: one line naming it);
1 a failure during the run (one line for the faults a command explains, a traceback for
anything else); 130 / 143 Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from training.errors import UserInputError
from training.run.lifecycle import Terminated
from training.utils.logging import end_progress_line, import_tensorflow_quietly, setup_logging

LOG_LEVELS = ("debug", "info", "warning", "error")
# The widest beam a command that captions takes (--beam); the service allows half (serve.MAX_REQUEST_BEAM).
MAX_BEAM = 20


def parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """An ArgumentParser with the --log-level every command takes."""
    parser = argparse.ArgumentParser(prog=f"python -m {prog}", description=(doc or "").strip().splitlines()[0])
    parser.add_argument(
        "--log-level",
        default="info",
        type=str.lower,
        choices=LOG_LEVELS,
        help="debug also shows TensorFlow's start-up lines (default: %(default)s)",
    )
    return parser


def int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(
                f"{value} is out of range: use {low} to {high}"
                if high is not None
                else f"{value} is out of range: use an integer >= {low}"
            )
        return value

    parse.__name__ = "integer"
    return parse


def start(level: str, import_tensorflow: bool = True) -> None:
    """Log at `level`; TensorFlow's start-up lines show only at debug (imported now unless told otherwise)."""
    setup_logging(level)
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0" if level.lower() == "debug" else "3"
    if import_tensorflow:
        import_tensorflow_quietly()


def run(body: Callable[[], int | None], explain: Callable[[Exception], int | None] | None = None) -> int:
    """Run a command's body: user errors -> one line, exit 2; a fault `explain` prints and gives a code for;
    Ctrl-C -> 130, SIGTERM -> 143; anything else keeps its traceback."""
    try:
        return body() or 0
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        terminated = isinstance(interrupt, Terminated)
        end_progress_line()
        print("terminated" if terminated else "interrupted", file=sys.stderr)
        return 143 if terminated else 130
    except Exception as error:
        end_progress_line()  # what `explain` prints begins a line, not the end of a progress bar's
        code = explain(error) if explain is not None else None
        if code is None:
            raise
        return code
