"""The precision policy a run picks from the hardware: `use_mixed_precision` true, false or auto."""

import json

import pytest

from training.configs import ConfigError, config_from_dict
from training.utils.mixed_precision import BFLOAT16_MIN_SPEEDUP, cached_matmul_rates, choose_policy, cpu_flags, cpu_model

AVX512_BF16 = {"avx2", "avx512f", "avx512_bf16"}
AMX = AVX512_BF16 | {"amx_tile", "amx_bf16"}


def never_measured():
    raise AssertionError("the matmul probe ran where the flags decide")


def rates(bfloat16, float32=100.0):
    return lambda: {"bfloat16": bfloat16, "float32": float32, "measured_at": "2026-12-03 09:50"}


@pytest.mark.parametrize(
    "setting, gpus, flags, onednn, expected",
    [
        (False, ["/gpu:0"], AMX, True, "float32"),  # false is float32 everywhere
        ("auto", ["/gpu:0"], set(), True, "mixed_float16"),
        (True, ["/gpu:0"], set(), True, "mixed_float16"),
        ("auto", [], {"avx2", "avx512f"}, True, "float32"),  # no native bfloat16: emulated, slower
        (True, [], {"avx2"}, True, "float32"),
        ("auto", [], AMX, False, "float32"),  # TF_ENABLE_ONEDNN_OPTS=0: no oneDNN bfloat16 kernels
        ("auto", [], AMX, True, "mixed_bfloat16"),  # AMX: known faster, nothing measured
        (True, [], AVX512_BF16, True, "mixed_bfloat16"),  # true keeps bfloat16 wherever it is native
    ],
)
def test_the_flags_decide_where_they_can(setting, gpus, flags, onednn, expected):
    policy, why = choose_policy(setting, gpus, flags, onednn, never_measured)
    assert policy == expected and why


def test_avx512_bf16_without_amx_is_measured_and_bfloat16_chosen_only_where_faster():
    policy, why = choose_policy("auto", [], AVX512_BF16, True, rates(187.0, 95.0))
    assert policy == "mixed_bfloat16"
    assert "187 GFLOP/s against 95 for float32 (1.97x" in why and "2026-12-03 09:50" in why
    policy, why = choose_policy("auto", [], AVX512_BF16, True, rates(100.0 * BFLOAT16_MIN_SPEEDUP * 0.99))
    assert policy == "float32" and f"under {BFLOAT16_MIN_SPEEDUP}x" in why


def test_the_probe_runs_once_per_machine_and_is_cached(tmp_path):
    path, calls = tmp_path / "cache" / "matmul_probe.json", []

    def probe():
        calls.append(1)
        return {"float32": 90.0, "bfloat16": 180.0}

    first, measured = cached_matmul_rates(path, probe)
    assert measured and first["bfloat16"] == 180.0 and first["measured_at"]
    again, measured = cached_matmul_rates(path, probe)
    assert not measured and again == first and len(calls) == 1
    [(key, saved)] = json.loads(path.read_text()).items()
    assert saved == first
    path.write_text("not json")  # a broken cache is measured again and rewritten, not an error
    assert cached_matmul_rates(path, probe)[1] and len(calls) == 2


def test_the_real_probe_measures_both_dtypes_and_the_run_logs_its_choice(tmp_path, monkeypatch, caplog):
    import logging

    import keras

    from training.utils import configure_precision

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    rates_now, measured = cached_matmul_rates()
    assert measured and rates_now["float32"] > 0 and rates_now["bfloat16"] > 0
    assert (tmp_path / "image-captioning" / "matmul_probe.json").is_file()
    try:
        with caplog.at_level(logging.INFO, logger="training.utils.mixed_precision"):
            policy = configure_precision("auto")
        [line] = [r.getMessage() for r in caplog.records if "precision policy" in r.getMessage()]
        assert line.startswith(f"Keras precision policy: {policy} (") and keras.mixed_precision.global_policy().name == policy
        if "avx512_bf16" in cpu_flags() and "amx_bf16" not in cpu_flags() and policy != "mixed_float16":
            assert rates_now["measured_at"] in line  # the cached probe decided, not a new one
    finally:
        configure_precision(False)


def test_cpu_flags_and_model_come_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx512f avx512_bf16\n\n"
        "processor\t: 1\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx512f avx512_bf16\n"
    )
    assert cpu_flags(cpuinfo) == {"fpu", "avx512f", "avx512_bf16"} and cpu_model(cpuinfo) == "AMD EPYC"
    assert cpu_flags(tmp_path / "missing") == set()


def test_config_takes_true_false_or_auto():
    assert config_from_dict({}).training.use_mixed_precision == "auto"
    assert config_from_dict({"use_mixed_precision": False}).training.use_mixed_precision is False
    with pytest.raises(ConfigError, match="'use_mixed_precision' must be true, false or auto, got 'fast'"):
        config_from_dict({"use_mixed_precision": "fast"})
