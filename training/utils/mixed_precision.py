"""Device setup: GPU memory growth and the Keras precision policy (mixed float16 only on a GPU)."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def configure_gpus() -> list[str]:
    """Let TensorFlow grow GPU memory on demand instead of reserving it all; return the GPU names."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError as error:  # raised once the GPU is initialised; the run still works
            logger.warning("could not enable memory growth on %s: %s", gpu.name, error)
    return [gpu.name for gpu in gpus]


def configure_precision(use_mixed_precision: bool) -> str:
    """Set the global Keras dtype policy and return its name ('mixed_float16' or 'float32')."""
    import keras
    import tensorflow as tf

    policy = "float32"
    if use_mixed_precision:
        if tf.config.list_physical_devices("GPU"):
            policy = "mixed_float16"
        else:
            # float16 on CPU is emulated and slower than float32, so the setting only applies on a GPU.
            logger.info("use_mixed_precision is set but no GPU is visible: training in float32")
    # Set float32 explicitly too: the policy is process-global and an earlier run may have changed it.
    keras.mixed_precision.set_global_policy(policy)
    logger.info("Keras precision policy: %s", policy)
    return policy
