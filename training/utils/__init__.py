"""Utilities: file I/O, logging, precision, experiment tracking and model versioning (no TensorFlow at import).

The names below load on first use, so that importing one module of this package (say training.utils.io,
which training.artifacts needs) does not import the others (experiment_tracking needs training.artifacts).
"""

from training.lazy import lazy_names

_EXPORTS = {
    "ExperimentTracker": "experiment_tracking",
    "set_global_seed": "experiment_tracking",
    "atomic_path": "io",
    "ensure_dir": "io",
    "load_json": "io",
    "save_json": "io",
    "setup_logging": "logging",
    "configure_precision": "mixed_precision",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_names(__name__, _EXPORTS)
