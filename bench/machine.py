"""The machine a benchmark ran on, for the JSON of every bench/*.py script (not itself a benchmark).

Figures from different machines differ by more than any change of the code: the bfloat16 matmul
rate one process gets was 570-890 GFLOP/s on a 2-core Intel Xeon with AMX and 187 on a 2-core
AMD EPYC with AVX512-BF16 alone, and other jobs on a shared machine move it by 2-10x. So every
JSON carries `machine`: the CPU model, whether it has AMX and AVX512-BF16 (/proc/cpuinfo flags),
the float32 and bfloat16 matmul rates measured when the benchmark started (1024 x 1024
`tf.matmul`, in a subprocess: training.utils.mixed_precision's probe), and the load average at
its start and end.

    facts = machine.describe()          # at the start
    ...
    print(json.dumps({..., "machine": machine.finish(facts)}))
"""

from __future__ import annotations

import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.utils.mixed_precision import cpu_flags, cpu_model, probe_matmul_rates  # noqa: E402


def installed(*names: str) -> str | None:
    for name in names:
        try:
            return version(name)
        except PackageNotFoundError:
            pass
    return None


def load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages (None where the OS has none)."""
    return [round(value, 2) for value in os.getloadavg()] if hasattr(os, "getloadavg") else None


def describe(matmul: bool = True) -> dict:
    """The machine now; `matmul` measures its float32 and bfloat16 matmul rates (~5-20 s)."""
    flags = cpu_flags()
    facts = {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "amx": "amx_bf16" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "python": platform.python_version(),
        "tensorflow": installed("tensorflow-cpu", "tensorflow"),
        "keras": installed("keras"),
        "load_average_at_start": load_average(),
    }
    if matmul:
        facts["matmul_gflop_per_s_at_start"] = probe_matmul_rates()
    return facts


def finish(facts: dict) -> dict:
    """`facts` with the load average at the end of the benchmark."""
    return {**facts, "load_average_at_end": load_average()}


if __name__ == "__main__":  # `make bench` runs every script: this one prints the machine first
    import json

    print(json.dumps(finish(describe())))
