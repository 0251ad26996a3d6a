"""Utilities: file I/O, logging, precision, experiment tracking and model versioning (no TensorFlow at import)."""

from training.utils.experiment_tracking import ExperimentTracker, set_global_seed
from training.utils.io import atomic_path, ensure_dir, load_json, save_json
from training.utils.logging import setup_logging
from training.utils.mixed_precision import configure_precision

__all__ = [
    "ExperimentTracker",
    "atomic_path",
    "configure_precision",
    "ensure_dir",
    "load_json",
    "save_json",
    "set_global_seed",
    "setup_logging",
]
