"""Logging setup: one format for every logger under `training`, configured once."""

from __future__ import annotations

import logging
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
