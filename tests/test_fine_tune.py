"""Fine-tuning a keras.applications backbone (random weights, 64 px, the tiny demo set): the top blocks train with
the decoder after `fine_tune_after` frozen epochs, a run killed with SIGKILL resumes to the metrics.csv of one that
ran straight through, and the export, the service and `training.caption` give the same captions."""

import json
import signal

import numpy as np
import pytest
import yaml
from helpers import (
    run_python,
    save_keras_application,
    saved_model_captions,
    served_captions,
    serving,
    tiny_config,
    train_with_callback,
)
from PIL import Image
from test_long_runs import ENV, metrics

# Records the image encoder's weights after each epoch (and before the first) in sys.argv[2]; with sys.argv[3] = "kill",
# dies by SIGKILL in the second batch of the second epoch, when the first epoch's state is saved.
RECORD_OR_KILL = """
import json, os, signal, keras, numpy as np
class Fault(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.seen = {}
    def record(self, epoch):
        weights = self.model.image_encoder.trainable_weights
        self.seen[epoch] = [float(np.abs(np.asarray(w.numpy(), "float64")).sum()) for w in weights]
        json.dump(self.seen, open(sys.argv[2], "w"))
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        if epoch == 0:
            self.record("start")
    def on_train_batch_end(self, batch, logs=None):
        if sys.argv[3] == "kill" and (self.epoch, batch) == (1, 1):
            os.kill(os.getpid(), signal.SIGKILL)
    def on_epoch_end(self, epoch, logs=None):
        self.record(epoch + 1)
"""


def write_config(folder, demo_data, weights):
    settings = dict(
        feature_extractor="MobileNetV3Small",
        extractor_weights=str(weights),
        image_size=[64, 64],
        feature_dim=96,  # the channels at the cut: 4x4x96 regions are stored
        fine_tune_from=2,  # the top two blocks and the head train
        fine_tune_after=1,
        max_images=40,
        epochs=3,
        dropout=0.1,
        eval_max_images=4,
    )
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_config(demo_data, folder / "artifacts", **settings)))
    return path


def train(config, record, fault="none"):
    return train_with_callback(RECORD_OR_KILL, config, record, fault, env=ENV)


def assert_export_and_service_agree(artifacts, images, captioned, folder):
    """The exported SavedModel and the service give `captioned`, [(caption, score)] of `training.caption`."""
    run_python(["-m", "training.export", "--artifacts", str(artifacts), "--out", str(folder / "export")])
    exported = saved_model_captions(folder / "export" / "saved_model", images)
    assert [text for text, _ in exported] == [text for text, _ in captioned]
    assert [score for _, score in exported] == pytest.approx([score for _, score in captioned], abs=1e-4)
    with serving(artifacts) as (url, _):
        served = served_captions(url, images, "image/png")
    assert [r["caption"] for r in served] == [text for text, _ in captioned]
    assert [r["score"] for r in served] == pytest.approx([score for _, score in captioned], abs=1e-4)


@pytest.fixture(scope="module")
def weights(demo_data, tmp_path_factory):
    """A random MobileNetV3Small (seeded) whose batch-norm statistics are those of the demo images at 64 px."""
    paths = sorted((demo_data / "Images").glob("*.png"))[:16]
    images = np.stack([np.asarray(Image.open(p).convert("RGB").resize((64, 64)), "float32") for p in paths])
    return save_keras_application(tmp_path_factory.mktemp("weights") / "mobilenet.weights.h5", images, "MobileNetV3Small")


@pytest.fixture(scope="module")
def reference(demo_data, weights, tmp_path_factory):
    """A run straight through: (its artifacts_dir, the encoder's weights by epoch)."""
    folder = tmp_path_factory.mktemp("reference")
    done = train(write_config(folder, demo_data, weights), folder / "weights.json")
    assert done.returncode == 0, done.stderr[-3000:]
    return folder / "artifacts", json.loads((folder / "weights.json").read_text())


def test_the_top_is_frozen_for_fine_tune_after_epochs_then_trains(reference):
    artifacts, seen = reference
    assert seen["1"] == seen["start"]  # epoch 1: no gradient reached the encoder
    assert all(a != b for a, b in zip(seen["2"], seen["1"]))  # epoch 2: every weight of it moved
    assert all(a != b for a, b in zip(seen["3"], seen["2"]))
    losses = [float(row["train_loss"]) for row in metrics(artifacts)]
    assert losses[-1] < losses[0]
    snapshot = json.loads((artifacts / "config_snapshot.json").read_text())
    assert snapshot["model"]["fine_tune_from"] == 2 and snapshot["training"]["fine_tune_after"] == 1


def test_a_killed_run_resumes_to_the_metrics_of_one_run_straight_through(reference, demo_data, weights, tmp_path):
    config = write_config(tmp_path, demo_data, weights)
    killed = train(config, tmp_path / "killed.json", "kill")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = train(config, tmp_path / "resumed.json")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "1 epoch(s) done" in resumed.stderr
    assert metrics(tmp_path / "artifacts") == metrics(reference[0])
    seen = json.loads((tmp_path / "resumed.json").read_text())
    assert seen["3"] == reference[1]["3"]  # the encoder too ends where the uninterrupted run's did


def test_export_service_and_caption_command_give_the_same_captions(reference, demo_data, tmp_path):
    artifacts = reference[0]
    images = [str(p) for p in sorted((demo_data / "Images").glob("*.png"))[:4]]
    done = run_python(["-m", "training.caption", *images, "--artifacts", str(artifacts), "--json"])
    expected = [(r["caption"], r["score"]) for r in json.loads(done.stdout)]
    assert_export_and_service_agree(artifacts, images, expected, tmp_path)


def test_a_cut_that_a_skip_connection_crosses_is_refused_before_anything_is_written(demo_data, tmp_path):
    settings = dict(feature_extractor="MobileNetV3Small", image_size=[64, 64], feature_dim=96)
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(tiny_config(demo_data, tmp_path / "artifacts", fine_tune_from="expanded_conv_7_project_bn", **settings))
    )
    done = run_python(["-m", "training.train", "--config", str(config)], check=False)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "'fine_tune_from': 'expanded_conv_7_project_bn' does not split" in done.stderr
    assert "expanded_conv_7_add" in done.stderr  # among the valid choices
    assert not (tmp_path / "artifacts").exists()
