"""Logging setup: one format for every logger under `training`, configured once."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

from training.utils.io import ensure_dir

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
_OWNED = "_training_setup_logging"  # marks the handlers this module added, so a second call replaces them


def setup_logging(level: str | int = "INFO", log_file: str | Path | None = None) -> logging.Logger:
    """Configure the `training` logger: stderr (and optionally a file), one format, safe to call again."""
    logger = logging.getLogger("training")
    logger.setLevel(level.upper() if isinstance(level, str) else level)
    for handler in [h for h in logger.handlers if getattr(h, _OWNED, False)]:
        logger.removeHandler(handler)
        handler.close()
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None:
        ensure_dir(Path(log_file).parent)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    formatter = logging.Formatter(LOG_FORMAT, DATE_FORMAT)
    for handler in handlers:
        handler.setFormatter(formatter)
        setattr(handler, _OWNED, True)
        logger.addHandler(handler)
    # Notebooks and absl may put a handler on the root logger; not propagating avoids every line twice.
    logger.propagate = False
    return logger


def draws_progress(stream=None) -> bool:
    """Whether progress bars belong on `stream` (stdout by default): a terminal or a notebook redraws a bar
    in place, while a file or a pipe keeps every redraw (hundreds of KB a run), so there an epoch is one line."""
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) or "ipykernel" in sys.modules


def end_progress_line() -> None:
    """Move stderr to a new line if a progress bar may have been left half drawn, so what follows begins a line."""
    if draws_progress(sys.stdout) or draws_progress(sys.stderr):
        sys.stdout.flush()
        print(file=sys.stderr, flush=True)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its start-up lines (oneDNN, CPU features) hidden unless `training` logs at debug.

    TensorFlow's C++ writes them before any log level applies, so file descriptor 2 goes to a buffer
    during the import; the buffer is shown after all when the import fails.
    """
    if "tensorflow" in sys.modules or logging.getLogger("training").isEnabledFor(logging.DEBUG):
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
