"""Utilities that know nothing of runs: file I/O, logging, precision, seeds, private Keras (no TensorFlow at import).

`ExperimentTracker` lives in training.run.experiment_tracking; it stays importable from here, the path the
project's first README showed, and loads on first use (PEP 562), so importing this package never imports run's.
"""

from training.utils.logging import setup_logging
from training.utils.mixed_precision import configure_precision
from training.utils.seeds import set_global_seed

__all__ = ["ExperimentTracker", "configure_precision", "set_global_seed", "setup_logging"]


def __getattr__(name: str):
    if name == "ExperimentTracker":
        from training.run.experiment_tracking import ExperimentTracker

        return ExperimentTracker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
