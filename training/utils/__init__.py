"""Utilities: file I/O, logging, precision, experiment tracking and model versioning (no TensorFlow at import).

The names below load on first use, so that importing one module of this package (say training.utils.io,
which training.artifacts needs) does not import the others (experiment_tracking needs training.artifacts).
"""

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


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'training.utils' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"training.utils.{_EXPORTS[name]}"), name)
