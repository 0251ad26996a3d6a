"""Seeds: one call makes a run's random draws repeatable (Python, NumPy, Keras, TensorFlow)."""

from __future__ import annotations

import os
import random


def set_global_seed(seed: int, deterministic_ops: bool = True) -> None:
    """Seed Python, NumPy and the Keras/TF backend; with deterministic_ops, two CPU runs give identical losses."""
    import keras
    import numpy as np

    # Only reaches subprocesses (this interpreter's hash seed is fixed at start-up), e.g. data workers.
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)
    if deterministic_ops and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        # Without this, some kernels (reductions, scatter, cuDNN) pick non-deterministic algorithms.
        tf.config.experimental.enable_op_determinism()
