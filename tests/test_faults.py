"""Faults during a run: bad paths in the config, NaN loss, a full disk, a kill in the middle of a write."""

import json
import subprocess

import pytest
import yaml
from helpers import run_python, train_with_callback, write_config
from test_serving import run, server  # noqa: F401 - the service of the shared trained run

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


def mounted_tmpfs(mount_point, size):
    """A real tmpfs of `size` (e.g. "24m") at `mount_point`, unmounted after the test; skips where mount needs root."""
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip()}): needs root")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    yield from mounted_tmpfs(tmp_path / "disk", "24m")


@pytest.fixture
def tiny_disk(tmp_path):
    yield from mounted_tmpfs(tmp_path / "disk", "1m")


def test_full_disk_gives_a_clear_error_and_keeps_the_previous_checkpoint(small_disk, demo_data):
    import keras

    import training.models  # noqa: F401

    artifacts = small_disk / "artifacts"
    config_path = write_config(
        small_disk / "config.yaml", demo_data, artifacts, epochs=3, early_stopping_patience=10, eval_max_images=2
    )  # the resumed run's evaluation is not what is checked
    done = run_with(FILL_DISK_AFTER_EPOCH_1, config_path)
    assert done.returncode == 1, done.stderr[-3000:]
    assert f"could not write {artifacts}/" in done.stderr  # the file, by name
    assert "No space left on device" in done.stderr and "resumes" in done.stderr
    assert "Traceback" not in done.stderr
    keras.saving.load_model(artifacts / "checkpoint.keras")  # epoch 1's checkpoint is intact
    (artifacts / "filler").unlink()
    again = run_python(["-m", "training.train", "--config", str(config_path)])
    assert "resuming from" in again.stdout + again.stderr
    assert (artifacts / "image_caption_model_final.keras").is_file()


def test_a_full_disk_during_extraction_names_the_store_file_and_leaves_no_partial_file(tiny_disk, demo_data):
    # 120 images of 64 x 64 px: PatchGrid's 64 x 192 float16 grids take 2.9 MB, on a 1 MB disk. The store's
    # file is memory-mapped: were its blocks not reserved first, the process would die of SIGBUS writing a row.
    artifacts = tiny_disk / "artifacts"
    config_path = write_config(tiny_disk.parent / "config.yaml", demo_data, artifacts, image_size=[64, 64])
    done = run_python(["-m", "training.train", "--config", str(config_path)], check=False)
    assert done.returncode == 1, done.stderr[-3000:]
    [line] = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert line.startswith(f"error: could not write {artifacts / 'features.partial.npy'}: No space left on device. Free space")
    assert "Traceback" not in done.stderr
    assert not (artifacts / "features.partial.npy").exists()  # nothing half-made is left to resume


def test_kill_during_a_checkpoint_write_leaves_no_half_written_file(tmp_path, demo_data):
    import keras

    import training.models  # noqa: F401

    artifacts = tmp_path / "artifacts"
    # Epoch 1 saves the checkpoint, then the resume state; epoch 2's checkpoint write is killed.
    config_path = write_config(
        tmp_path / "config.yaml",
        demo_data,
        artifacts,
        epochs=3,
        early_stopping_patience=10,
        learning_rate=0.003,
        eval_max_images=2,
    )
    done = run_with(KILL_INSIDE_MODEL_SAVE, config_path)
    assert done.returncode == -9, done.stderr[-3000:]
    keras.saving.load_model(artifacts / "checkpoint.keras")  # still epoch 1's, whole
    leftovers = [p.name for p in artifacts.glob(".*.tmp*")]
    assert leftovers, "the killed write should have left its temporary file"
    again = run_python(["-m", "training.train", "--config", str(config_path)])
    assert "resuming from" in again.stdout + again.stderr
    assert not list(artifacts.glob(".*.tmp*")), "stale temporary files are cleaned up on the next run"
    assert (artifacts / "image_caption_model_final.keras").is_file()


# -- refusals: one line, exit 2, before anything is written -----------------------------------------
REFUSE = """
import sys
from training.train import main
code = main(["--config", sys.argv[1], *sys.argv[2:]])
print("tensorflow loaded:", "tensorflow" in sys.modules)
sys.exit(code)
"""


def refuse(config_path, *overrides):
    """The training command's answer to `overrides`, and whether it imported TensorFlow first."""
    done = run_python(["-c", REFUSE, str(config_path), *(f"--set={o}" for o in overrides)], check=False)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    [line] = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    return line, "tensorflow loaded: True" in done.stdout


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["max_images=2"], "the val split has no images (2 images in all"),
        (
            ["val_split=0", "test_split=0.2"],
            "the val split has no images (120 images in all, train/val/test splits 0.8/0.0/0.2): raise val_split",
        ),
        (["test_split=0", "val_split=0.2"], "the test split has no images"),
        (
            ["word_count_threshold=100000"],
            "'word_count_threshold' is 100000 but no word of the training captions occurs that often",
        ),
        (
            ["feature_extractor=EfficientNetB9"],
            "unknown feature extractor 'EfficientNetB9' (config key 'feature_extractor'); did you mean",
        ),
    ],
)
def test_a_run_that_cannot_work_is_refused_before_tensorflow_loads_and_leaves_no_folder(tmp_path, demo_data, overrides, message):
    artifacts = tmp_path / "runs" / "new"
    line, tensorflow = refuse(write_config(tmp_path / "config.yaml", demo_data, artifacts), *overrides)
    assert message in line
    assert not tensorflow
    assert not (tmp_path / "runs").exists()  # nor the folder that would have held it


def test_a_missing_image_is_refused_before_the_snapshot_is_written(tmp_path, demo_data):
    images = tmp_path / "Images"
    images.mkdir()
    for path in sorted((demo_data / "Images").iterdir())[1:]:  # all but the first
        (images / path.name).symlink_to(path)
    artifacts = tmp_path / "artifacts"
    line, _ = refuse(
        write_config(tmp_path / "config.yaml", demo_data, artifacts, images_path=str(images), max_bad_image_fraction=0.0)
    )
    assert "1 of 120 images are unusable" in line
    assert not artifacts.exists()


def test_a_damaged_resume_file_is_named_and_nothing_is_changed(tmp_path, trained_run):
    import shutil

    artifacts = tmp_path / "artifacts"
    shutil.copytree(trained_run[0], artifacts, symlinks=True)
    config = json.loads((artifacts / "config_snapshot.json").read_text())
    config["data"]["artifacts_dir"] = str(artifacts)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    [state] = (artifacts / "resume").iterdir()
    model = state / "model.keras"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    before = tree(artifacts)
    line, tensorflow = refuse(config_path, "epochs=4")  # extends the run: it would resume from that file
    assert line.startswith(f"error: {model} is damaged (")
    assert "nothing was changed" in line and "--fresh" in line
    assert not tensorflow and tree(artifacts) == before


def tree(folder):
    """Every file under `folder` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def test_a_bad_captions_header_leaves_no_folder(tmp_path, demo_data):
    captions = tmp_path / "captions.txt"
    captions.write_text("picture,text\n" + "\n".join((demo_data / "captions.txt").read_text().splitlines()[1:]))
    artifacts = tmp_path / "artifacts"
    line, _ = refuse(write_config(tmp_path / "config.yaml", demo_data, artifacts, captions_file=str(captions)))
    assert str(captions) in line and "line 1" in line
    assert not artifacts.exists()


# -- images that decode to gigabytes ------------------------------------------------------------------
def bomb_png(path, side=50_000):
    """A whole, valid 1-bit PNG of side x side black pixels: 0.3 MB on disk, 2.5 gigapixels decoded."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(9), b"\0" * (1 + side // 8)  # filter byte, then the row's bits
    pixels = b"".join(packer.compress(row * 1000) for _ in range(side // 1000)) + packer.flush()
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", pixels)
        + chunk(b"IEND", b"")
    )
    return path


def test_caption_refuses_an_image_over_the_pixel_limit_before_decoding_it(tmp_path, trained_run, demo_data):
    bomb = bomb_png(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 1_000_000
    image = sorted((demo_data / "Images").iterdir())[0]
    done = run_python(["-m", "training.caption", str(bomb), str(image), "--artifacts", str(trained_run[0])], check=False)
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"error: {bomb}: over " in done.stderr and "(--max-pixels)" in done.stderr
    assert done.stdout.startswith(f"{image}\t")  # the other image is captioned
    small = run_python(
        ["-m", "training.caption", str(image), "--artifacts", str(trained_run[0]), "--max-pixels", "100"], check=False
    )
    assert small.returncode == 2 and "32 x 32 = 1024 pixels, over the limit of 100 (--max-pixels)" in small.stderr


def test_service_answers_413_to_an_image_over_the_pixel_limit_and_a_second_one_on_its_port_exits_2(tmp_path, server, run):
    import time

    import httpx

    url, _ = server
    # The bomb's first 64 KB: its header declares the 50000 x 50000 pixels, and this server takes bodies of
    # up to 100 KB (--max-image-bytes), where the whole file is 0.3 MB.
    head = bomb_png(tmp_path / "bomb.png").read_bytes()[:65536]
    answer = httpx.post(url + "/caption", content=head, headers={"Content-Type": "image/png"}, timeout=60)
    assert answer.status_code == 413 and "(--max-pixels)" in answer.json()["error"], answer.text
    port = int(url.rsplit(":", 1)[1])
    started = time.monotonic()
    second = run_python(
        [
            "-c",
            "import sys; from training.serve import main; code = main(sys.argv[1:]); "
            "print('tensorflow loaded:', 'tensorflow' in sys.modules); sys.exit(code)",
            "--artifacts",
            str(run),
            "--port",
            str(port),
        ],
        check=False,
    )
    took = time.monotonic() - started
    assert second.returncode == 2, second.stderr[-3000:]
    assert f"error: cannot listen on 127.0.0.1:{port}: Address already in use" in second.stderr
    assert "tensorflow loaded: False" in second.stdout and took < 30  # at once: before TensorFlow and the model load
