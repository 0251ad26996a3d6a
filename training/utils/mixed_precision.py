"""Device setup: GPU memory growth and the Keras precision policy (float16 on a GPU, bfloat16 on a CPU that has it)."""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

# CPU flags (Linux /proc/cpuinfo) of native bfloat16 matmuls: AMX tiles or AVX512-BF16 dot products.
BFLOAT16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


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


def cpu_supports_bfloat16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """True when this CPU has native bfloat16 matmuls and TensorFlow reaches them through oneDNN.

    Without both, TensorFlow emulates bfloat16 and it is slower than float32.
    """
    try:
        text = Path(cpuinfo).read_text()
    except OSError:  # not Linux, or no /proc
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    if not set(BFLOAT16_CPU_FLAGS) & set(flags):
        return False
    from training.utils.keras_private import onednn_enabled

    return onednn_enabled()  # False with TF_ENABLE_ONEDNN_OPTS=0


def configure_precision(use_mixed_precision: bool) -> str:
    """Set the global Keras dtype policy and return its name: 'mixed_float16', 'mixed_bfloat16' or 'float32'.

    With use_mixed_precision: float16 compute on a GPU; bfloat16 compute on a CPU with native
    bfloat16 (AMX or AVX512-BF16, through oneDNN), where it trained W1 ~10% faster than float32
    with the same loss curve (bench/train.py); float32 elsewhere, since emulated half precision
    is slower than float32. Variables, the softmax and the loss stay float32 in every case.

    Every run calls this before it touches a device, so it also turns on GPU memory growth
    (`configure_gpus`) whenever a GPU is visible, whatever the precision.
    """
    import keras

    gpus = configure_gpus()
    policy = "float32"
    if use_mixed_precision:
        if gpus:
            policy = "mixed_float16"
        elif cpu_supports_bfloat16():
            policy = "mixed_bfloat16"
        else:
            logger.info("use_mixed_precision is set but there is no GPU and no native bfloat16 on this CPU: training in float32")
    # Set float32 explicitly too: the policy is process-global and an earlier run may have changed it.
    keras.mixed_precision.set_global_policy(policy)
    logger.info("Keras precision policy: %s", policy)
    return policy
