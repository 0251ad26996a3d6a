"""Faults during a run: bad paths in the config, NaN loss, a full disk, a kill in the middle of a write."""

import subprocess

import pytest

from helpers import run_python, train_with_callback, write_config

NAN_IN_EPOCH_2 = """
import keras, numpy as np
class Fault(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 1 and batch == 1:  # the weights blow up in the second epoch
            for weight in self.model.trainable_weights:
                weight.assign(np.full(weight.shape, np.nan, dtype="float32"))
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
"""

FILL_DISK_AFTER_EPOCH_1 = """
import keras, os
class Fault(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:  # runs before the checkpoint callbacks of epoch 2: they find the disk full
            with open(os.path.join(os.path.dirname(sys.argv[1]), "artifacts", "filler"), "wb") as handle:
                try:
                    while True:
                        handle.write(b"\\0" * (1 << 20))
                except OSError:
                    pass
"""

KILL_INSIDE_MODEL_SAVE = """
import keras, os, signal
saves = []
original_save = keras.Model.save
def save(self, filepath, *args, **kwargs):
    saves.append(filepath)
    if len(saves) == 3:  # epoch 2's checkpoint: write half a file, then die before any rename
        with open(filepath, "wb") as handle:
            handle.write(b"PK half a zip")
        os.kill(os.getpid(), signal.SIGKILL)
    return original_save(self, filepath, *args, **kwargs)
keras.Model.save = save
class Fault(keras.callbacks.Callback):
    pass
"""


def run_with(callback, config_path):
    return train_with_callback(callback, config_path)


@pytest.mark.parametrize("key", ["captions_file", "images_path", "glove_path"])
def test_missing_paths_name_the_config_key(tmp_path, demo_data, key):
    path = write_config(tmp_path / "config.yaml", demo_data, tmp_path / "artifacts", **{key: str(tmp_path / "does-not-exist")})
    done = run_python(["-m", "training.train", "--config", str(path)], check=False)
    assert done.returncode == 2
    assert f"'{key}'" in done.stderr and "does-not-exist" in done.stderr
    assert "Traceback" not in done.stderr


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, demo_data):
    import keras
    import numpy as np

    import training.models  # noqa: F401 - registers the model classes

    artifacts = tmp_path / "artifacts"
    done = run_with(NAN_IN_EPOCH_2, write_config(tmp_path / "config.yaml", demo_data, artifacts, epochs=4))
    assert done.returncode == 1, done.stderr[-3000:]
    assert "NaN or infinite" in done.stderr and "checkpoint.keras" in done.stderr
    model = keras.saving.load_model(artifacts / "checkpoint.keras")
    assert all(np.isfinite(np.asarray(w)).all() for w in model.weights)
    # The resume state is the last finite epoch, never the NaN one.
    assert [p.name for p in (artifacts / "resume").iterdir()] == ["epoch_00001"]


@pytest.fixture
def small_disk(tmp_path):
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount_point)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip()}): needs root")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_disk_gives_a_clear_error_and_keeps_the_previous_checkpoint(small_disk, demo_data):
    import keras

    import training.models  # noqa: F401

    artifacts = small_disk / "artifacts"
    config_path = write_config(small_disk / "config.yaml", demo_data, artifacts, epochs=3, early_stopping_patience=10,
                               eval_max_images=2)  # the resumed run's evaluation is not what is checked
    done = run_with(FILL_DISK_AFTER_EPOCH_1, config_path)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "No space left on device" in done.stderr and "resumes" in done.stderr
    assert "Traceback" not in done.stderr
    keras.saving.load_model(artifacts / "checkpoint.keras")  # epoch 1's checkpoint is intact
    (artifacts / "filler").unlink()
    again = run_python(["-m", "training.train", "--config", str(config_path)])
    assert "resuming from" in again.stdout + again.stderr
    assert (artifacts / "image_caption_model_final.keras").is_file()


def test_kill_during_a_checkpoint_write_leaves_no_half_written_file(tmp_path, demo_data):
    import keras

    import training.models  # noqa: F401

    artifacts = tmp_path / "artifacts"
    # Epoch 1 saves the checkpoint, then the resume state; epoch 2's checkpoint write is killed.
    config_path = write_config(tmp_path / "config.yaml", demo_data, artifacts, epochs=3, early_stopping_patience=10, learning_rate=0.003,
                               eval_max_images=2)
    done = run_with(KILL_INSIDE_MODEL_SAVE, config_path)
    assert done.returncode == -9, done.stderr[-3000:]
    keras.saving.load_model(artifacts / "checkpoint.keras")  # still epoch 1's, whole
    leftovers = [p.name for p in artifacts.glob(".*.tmp*")]
    assert leftovers, "the killed write should have left its temporary file"
    again = run_python(["-m", "training.train", "--config", str(config_path)])
    assert "resuming from" in again.stdout + again.stderr
    assert not list(artifacts.glob(".*.tmp*")), "stale temporary files are cleaned up on the next run"
    assert (artifacts / "image_caption_model_final.keras").is_file()
