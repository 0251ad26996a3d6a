"""Tests for training.utils: experiment tracking, seeding, logging, precision, and the README tracking example."""

import csv
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_readme_shows, run_python

from training.configs import Config
from training.run.experiment_tracking import git_info
from training.utils import ExperimentTracker, configure_precision, set_global_seed, setup_logging

REPO = Path(__file__).resolve().parents[1]

# Copied verbatim from the seed README ("Experiment Tracking" -> "Usage"); it must run as written.
README_TRACKING_EXAMPLE = """
from training.utils import ExperimentTracker, set_global_seed

# Set seed for reproducibility
set_global_seed(42)

# Create tracker
tracker = ExperimentTracker(
    output_dir="experiments/run_001",
    run_name="my_experiment",
    seed=42,
)

# Log config
tracker.log_config(config_dict)

# Log metrics during training
tracker.log_metrics(epoch=1, train_loss=2.5, val_loss=2.8)

# Log BLEU scores
tracker.log_bleu_scores(bleu1=0.65, bleu2=0.45, bleu3=0.35, bleu4=0.25)

# Finalize and save summary
tracker.finalize()
"""


@pytest.fixture
def restore_determinism():
    """set_global_seed turns on TF op determinism for the whole process; undo it so other tests are unaffected."""
    from tensorflow.python.framework import config as tf_config  # the public API has no "disable"

    was_enabled = tf_config.is_op_determinism_enabled()
    yield
    if not was_enabled:
        tf_config.disable_op_determinism()


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_readme_tracking_example_runs_as_written(tmp_path, monkeypatch, restore_determinism):
    monkeypatch.chdir(tmp_path)
    exec(README_TRACKING_EXAMPLE, {"config_dict": Config().to_dict()})

    run_dir = tmp_path / "experiments" / "run_001"
    summary = json.loads((run_dir / "run_summary.json").read_text())
    assert summary["metadata"]["run_name"] == "my_experiment"
    assert summary["metadata"]["seed"] == 42
    assert summary["final_metrics"] == {"epoch": 1, "train_loss": 2.5, "val_loss": 2.8}
    assert summary["bleu_scores"] == {"test_bleu1": 0.65, "test_bleu2": 0.45, "test_bleu3": 0.35, "test_bleu4": 0.25}
    assert summary["config"]["model"]["image_size"] == [300, 300]
    assert json.loads((run_dir / "config_snapshot.json").read_text()) == summary["config"]
    assert read_csv(run_dir / "metrics.csv") == [
        ["epoch", "train_loss", "val_loss", "learning_rate", "epoch_time_seconds"],
        ["1", "2.5", "2.8", "", ""],
    ]


def test_readme_example_matches_repo_readme():
    assert_readme_shows(README_TRACKING_EXAMPLE, "tracker.log_bleu_scores")


def test_metrics_csv_column_order_and_extra_keys(tmp_path):
    tracker = ExperimentTracker(tmp_path)
    tracker.log_metrics(
        epoch=1, val_loss=3.0, accuracy=np.float32(0.5), train_loss=3.5, epoch_time_seconds=1.25, learning_rate=1e-4
    )
    tracker.log_metrics(epoch=2, train_loss=2.5, val_loss=2.75, bleu4=0.1)
    rows = read_csv(tmp_path / "metrics.csv")
    assert rows[0] == ["epoch", "train_loss", "val_loss", "learning_rate", "epoch_time_seconds", "accuracy", "bleu4"]
    assert rows[1] == ["1", "3.5", "3.0", "0.0001", "1.25", "0.5", ""]
    assert rows[2] == ["2", "2.5", "2.75", "", "", "", "0.1"]


def test_resumed_run_keeps_earlier_epochs_and_never_duplicates(tmp_path):
    first = ExperimentTracker(tmp_path)
    for epoch in (1, 2, 3):
        first.log_metrics(epoch=epoch, train_loss=10.0 - epoch, val_loss=11.0 - epoch)
    # The run died after epoch 3 but its checkpoint is from epoch 2: the resumed run redoes epoch 3.
    resumed = ExperimentTracker(tmp_path)
    resumed.log_metrics(epoch=3, train_loss=6.5, val_loss=7.5)
    resumed.log_metrics(epoch=4, train_loss=5.5, val_loss=6.5)
    rows = read_csv(tmp_path / "metrics.csv")
    assert [row[:3] for row in rows[1:]] == [["1", "9.0", "10.0"], ["2", "8.0", "9.0"], ["3", "6.5", "7.5"], ["4", "5.5", "6.5"]]
    assert resumed.finalize()["final_metrics"] == {"epoch": 4, "train_loss": 5.5, "val_loss": 6.5}


def test_run_summary_shape(tmp_path):
    tracker = ExperimentTracker(tmp_path / "run", run_name="shape", seed=7)
    tracker.log_config(Config())
    tracker.log_metrics(epoch=1, train_loss=float("nan"), val_loss=2.0)
    tracker.log_bleu_scores(bleu4=0.25)
    tracker.log_scores(meteor=0.2, rouge_l=0.4, cider=np.float64(0.6))
    tracker.log_artifact("model", tmp_path / "model.keras")
    tracker.log_bad_images(["broken.jpg", {"image": "empty.jpg", "path": tmp_path / "empty.jpg", "reason": "empty file"}])
    tracker.finalize()

    summary = json.loads((tmp_path / "run" / "run_summary.json").read_text())  # strict JSON: NaN became null
    assert list(summary) == ["metadata", "config", "final_metrics", "bleu_scores", "scores", "artifacts", "bad_images"]
    meta = summary["metadata"]
    assert re.fullmatch(r"\d{8}_\d{6}_[0-9a-f]{8}", meta["run_id"])
    assert set(meta) == {
        "run_id",
        "run_name",
        "git_info",
        "environment",
        "seed",
        "started_at",
        "finished_at",
        "wall_time_seconds",
    }
    assert set(meta["git_info"]) == {"commit", "branch", "dirty"}
    env = meta["environment"]
    assert set(env) == {"python_version", "tensorflow_version", "keras_version", "numpy_version", "platform", "cpu_count", "gpus"}
    assert env["tensorflow_version"].startswith("2.") and env["keras_version"].startswith("3.")
    assert meta["seed"] == 7 and meta["wall_time_seconds"] >= 0
    assert summary["final_metrics"] == {"epoch": 1, "train_loss": None, "val_loss": 2.0}
    assert summary["bleu_scores"] == {"test_bleu4": 0.25}
    assert summary["scores"] == {"meteor": 0.2, "rouge_l": 0.4, "cider": 0.6}
    assert summary["artifacts"] == {"model": str(tmp_path / "model.keras")}
    assert summary["bad_images"] == [
        {"image": "broken.jpg", "path": None, "reason": None},
        {"image": "empty.jpg", "path": str(tmp_path / "empty.jpg"), "reason": "empty file"},
    ]
    assert read_csv(tmp_path / "run" / "metrics.csv")[1][1] == "nan"  # the CSV keeps the NaN visible
    assert not list((tmp_path / "run").glob(".*tmp*"))  # atomic writes left no temporary files


def test_git_info_outside_a_checkout_is_all_none(tmp_path):
    assert git_info(tmp_path) == {"commit": None, "branch": None, "dirty": None}


def _fit_losses(seed):
    import keras

    set_global_seed(seed)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 8)).astype("float32"), rng.integers(0, 3, size=64)
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dropout(0.5), keras.layers.Dense(3)]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model.fit(x, y, batch_size=16, epochs=3, shuffle=True, verbose=0).history["loss"]


def test_set_global_seed_makes_fits_repeatable(restore_determinism):
    first, second = _fit_losses(123), _fit_losses(123)
    assert first == second
    assert _fit_losses(124) != first


def test_importing_training_utils_does_not_import_tensorflow():
    code = "import sys, training.utils; print('tensorflow' in sys.modules or 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_setup_logging_is_idempotent_and_writes_the_file(tmp_path):
    log_file = tmp_path / "logs" / "train.log"
    setup_logging("DEBUG")
    logger = setup_logging("INFO", log_file=log_file)
    # Other tests run commands in this process, which set logging up too (pytest may hang its own handlers there).
    owned = lambda: [h for h in logger.handlers if getattr(h, "_training_setup_logging", False)]  # noqa: E731
    assert len(owned()) == 2  # stream + file, not four
    logging.getLogger("training.data.example").info("hello %s", "there")
    logging.getLogger("training.data.example").debug("hidden")
    for handler in logger.handlers:
        handler.flush()
    text = log_file.read_text()
    assert re.search(r"INFO +training\.data\.example: hello there", text) and "hidden" not in text
    setup_logging()  # back to the default, and the file handler is closed
    assert len(owned()) == 1


def test_configure_precision_on_a_cpu(tmp_path):
    import keras
    import tensorflow as tf

    from training.utils.mixed_precision import cpu_supports_bfloat16

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("checks the CPU policies")
    plain = tmp_path / "cpuinfo"
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert not cpu_supports_bfloat16(plain)
    expected = "mixed_bfloat16" if cpu_supports_bfloat16() else "float32"
    try:
        assert configure_precision(True) == expected
        assert keras.mixed_precision.global_policy().name == expected
    finally:
        assert configure_precision(False) == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.parametrize("user_setting", [None, "false"])
def test_importing_training_gives_tensorflow_the_bfc_cpu_allocator_unless_the_user_chose(user_setting):
    """`import training` sets TF_CPU_ALLOCATOR_USE_BFC=true unless the user set it. Only a pooling allocator keeps
    allocation statistics on the CPU: they exist when the package set it, and not when the user's
    TF_CPU_ALLOCATOR_USE_BFC=false was kept, except where TensorFlow runs oneDNN (CPUs with AVX512-VNNI, -BF16 or
    AMX), whose own CPU allocator pools and keeps them whatever the variable says. (This test process imported
    `training`, so its environment already has the setting: without a user's, the child starts from none.)"""
    code = (
        "import os\n"
        + ("" if user_setting else "os.environ.pop('TF_CPU_ALLOCATOR_USE_BFC', None)\n")
        + "import training, tensorflow as tf\n"
        "from training.utils.keras_private import onednn_enabled\n"
        "tf.ones([256, 256]) * 2.0\n"
        "try:\n    stats = tf.config.experimental.get_memory_info('CPU:0')['peak'] > 0\n"
        "except ValueError:\n    stats = 'no allocator stats'\n"
        "print(os.environ['TF_CPU_ALLOCATOR_USE_BFC'], onednn_enabled(), stats)\n"
    )
    done = run_python(code, env={"TF_CPU_ALLOCATOR_USE_BFC": user_setting} if user_setting else None)
    setting, onednn, stats = done.stdout.strip().splitlines()[-1].split(" ", 2)
    assert setting == (user_setting or "true")
    assert stats == ("True" if user_setting is None or onednn == "True" else "no allocator stats")
