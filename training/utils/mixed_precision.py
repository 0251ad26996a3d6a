"""Device setup: GPU memory growth and the Keras precision policy (float16 on a GPU, bfloat16 on a CPU where it is faster).

`use_mixed_precision: auto` (the default) picks bfloat16 on a CPU only where it is faster than
float32 on that machine: known for AMX (Intel's matrix tiles: bfloat16 matmuls several times
float32's), measured for AVX512-BF16 without AMX (AMD EPYC and some Intel parts: the gain depends
on the part), by a short matmul probe run once per machine in a subprocess and cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

# CPU flags (Linux /proc/cpuinfo) of native bfloat16 matmuls: AMX tiles or AVX512-BF16 dot products.
BFLOAT16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
# bfloat16 must beat float32 matmuls by this much to be chosen: the casts around the float32
# softmaxes, layer norms and loss take back part of the gain (bench/RESULTS.md, "Choices in the code").
BFLOAT16_MIN_SPEEDUP = 1.2
PROBE_SIZE, PROBE_REPEATS = 1024, 9
CPUINFO = "/proc/cpuinfo"


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


def _cpuinfo_field(name: str, cpuinfo: str | Path = CPUINFO) -> str:
    try:
        text = Path(cpuinfo).read_text()
    except OSError:  # not Linux, or no /proc
        return ""
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.split(":")[0].strip() == name), "")


def cpu_flags(cpuinfo: str | Path = CPUINFO) -> set[str]:
    """The first CPU's flags in /proc/cpuinfo (empty where there is none)."""
    return set(_cpuinfo_field("flags", cpuinfo).split())


def cpu_model(cpuinfo: str | Path = CPUINFO) -> str:
    import platform

    return _cpuinfo_field("model name", cpuinfo) or platform.processor() or platform.machine()


def cpu_supports_bfloat16(cpuinfo: str | Path = CPUINFO) -> bool:
    """True when this CPU has native bfloat16 matmuls and TensorFlow reaches them through oneDNN.

    Without both, TensorFlow emulates bfloat16 and it is slower than float32.
    """
    if not set(BFLOAT16_CPU_FLAGS) & cpu_flags(cpuinfo):
        return False
    from training.utils.keras_private import onednn_enabled

    return onednn_enabled()  # False with TF_ENABLE_ONEDNN_OPTS=0


def matmul_rates(size: int = PROBE_SIZE, repeats: int = PROBE_REPEATS, dtypes=("float32", "bfloat16")) -> dict[str, list[float]]:
    """GFLOP/s of each `tf.matmul` (size x size) in this process, `repeats` times per dtype, the dtypes
    alternated so that a load spike from other processes hits both alike."""
    import tensorflow as tf

    product = tf.function(lambda a, b: tf.reduce_sum(tf.cast(tf.matmul(a, b)[:1, :1], tf.float32)))
    pairs = {}
    for dtype in dtypes:
        a = tf.cast(tf.random.stateless_normal((size, size), seed=(1, 2)), dtype)
        b = tf.cast(tf.random.stateless_normal((size, size), seed=(3, 4)), dtype)
        product(a, b).numpy()  # traced and warmed up
        pairs[dtype] = (a, b)
    rates: dict[str, list[float]] = {dtype: [] for dtype in dtypes}
    for _ in range(repeats):
        for dtype, (a, b) in pairs.items():
            start = time.perf_counter()
            product(a, b).numpy()
            rates[dtype].append(2 * size**3 / (time.perf_counter() - start) / 1e9)
    return rates


def probe_matmul_rates() -> dict[str, float]:
    """Median float32 and bfloat16 matmul GFLOP/s, measured in a subprocess, so that this process's
    TensorFlow runtime is not started (a multi-worker strategy must be created before it is)."""
    done = subprocess.run(
        [sys.executable, "-m", "training.utils.mixed_precision"],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    if done.returncode:
        raise RuntimeError(f"the matmul probe failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def probe_cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "image-captioning" / "matmul_probe.json"


def cached_matmul_rates(path: Path | None = None, probe: Callable[[], dict] = probe_matmul_rates) -> tuple[dict, bool]:
    """(rates, measured now) for this machine: the cached probe of this CPU model, flags and TensorFlow
    version, or a new probe saved in the cache. A cache that cannot be read or written is skipped."""
    from importlib.metadata import version

    from training.utils.io import load_json, save_json

    path = path or probe_cache_path()
    key = hashlib.sha256(
        json.dumps([cpu_model(), sorted(cpu_flags()), os.cpu_count(), version("keras"), _tensorflow_version()]).encode()
    ).hexdigest()[:16]
    try:
        cache = load_json(path) if path.is_file() else {}
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key], False
    rates = {**probe(), "measured_at": time.strftime("%Y-%m-%d %H:%M"), "load_average_1m": round(os.getloadavg()[0], 2)}
    try:
        save_json({**cache, key: rates}, path)
    except OSError as error:
        logger.warning("could not cache the matmul probe in %s: %s", path, error)
    return rates, True


def _tensorflow_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for name in ("tensorflow-cpu", "tensorflow"):
        try:
            return version(name)
        except PackageNotFoundError:
            pass
    return "unknown"


def choose_policy(setting, gpus: list, flags: set, onednn: bool, rates: Callable[[], dict]) -> tuple[str, str]:
    """(Keras policy, why) for `use_mixed_precision` = True, False or 'auto' on this hardware.

    True keeps bfloat16 wherever the CPU has it natively; 'auto' also asks that it be faster here:
    known for AMX, measured (`rates()`: float32 and bfloat16 GFLOP/s) for AVX512-BF16 alone."""
    if setting is False:
        return "float32", "use_mixed_precision: false"
    if gpus:
        return "mixed_float16", f"a GPU ({gpus[0]})"
    units = [flag for flag in BFLOAT16_CPU_FLAGS if flag in flags]
    if not units:
        return "float32", "no GPU, and no AMX or AVX512-BF16 on this CPU: bfloat16 would be emulated, slower than float32"
    if not onednn:
        return "float32", f"the CPU has {' and '.join(units)}, but oneDNN is off (TF_ENABLE_ONEDNN_OPTS=0)"
    if setting is True:
        return "mixed_bfloat16", f"use_mixed_precision: true and the CPU has {' and '.join(units)}"
    if "amx_bf16" in units:
        return "mixed_bfloat16", "auto: the CPU has AMX, whose bfloat16 matmuls are several times float32's"
    measured = rates()
    speedup = measured["bfloat16"] / measured["float32"]
    how = (
        f"bfloat16 matmuls {measured['bfloat16']:.0f} GFLOP/s against {measured['float32']:.0f} for float32 "
        f"({speedup:.2f}x, measured {measured.get('measured_at', 'now')})"
    )
    if speedup >= BFLOAT16_MIN_SPEEDUP:
        return "mixed_bfloat16", f"auto: AVX512-BF16 without AMX, {how}"
    return "float32", f"auto: AVX512-BF16 without AMX, but {how}, under {BFLOAT16_MIN_SPEEDUP}x"


def configure_precision(use_mixed_precision: bool | str = "auto") -> str:
    """Set the global Keras dtype policy and return its name: 'mixed_float16', 'mixed_bfloat16' or 'float32'.

    float16 compute on a GPU; bfloat16 compute on a CPU with native bfloat16 (AMX or AVX512-BF16,
    through oneDNN) where `choose_policy` finds it faster; float32 elsewhere, since emulated half
    precision is slower than float32. Variables, the softmax and the loss stay float32 in every
    case. Logs the choice and its reason in one line.

    Every run calls this before it touches a device, so it also turns on GPU memory growth
    (`configure_gpus`) whenever a GPU is visible, whatever the precision.
    """
    import keras

    from training.utils.keras_private import onednn_enabled

    gpus = configure_gpus()
    policy, why = choose_policy(use_mixed_precision, gpus, cpu_flags(), onednn_enabled(), lambda: cached_matmul_rates()[0])
    # Set float32 explicitly too: the policy is process-global and an earlier run may have changed it.
    keras.mixed_precision.set_global_policy(policy)
    logger.info("Keras precision policy: %s (%s)", policy, why)
    return policy


if __name__ == "__main__":  # the probe of probe_matmul_rates: one JSON line of median GFLOP/s
    print(json.dumps({dtype: round(statistics.median(r), 1) for dtype, r in matmul_rates().items()}))
