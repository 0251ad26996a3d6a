"""Long runs: a rerun never replaces a run silently, extends it, survives kills and signals, and resumes exactly."""

import csv
import fnmatch
import hashlib
import json
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import yaml
from helpers import REPO, child_env, run_python, tiny_config

from training.run.lifecycle import KEPT_BY_FRESH

# Determinism on CPU: deterministic kernels, and no oneDNN (its kernels may sum in a thread-dependent
# order). Like every run of helpers.run_python, the evaluation finds no Java and skips METEOR.
ENV = {"TF_DETERMINISTIC_OPS": "1", "TF_ENABLE_ONEDNN_OPTS": "0"}

# A user callback is the public way into the training loop; it times each fault for real.
FAULTY_RUN = textwrap.dedent(
    """
    import os, signal, sys, time, keras
    from training.train import main, TrainingPipeline

    # A job started in the background by a shell without job control (as CI may run the tests)
    # inherits SIGINT ignored; Ctrl-C in a terminal meets Python's own handler, so restore it here.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    fault, at_epoch, at_batch = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

    class Fault(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
        def on_train_batch_end(self, batch, logs=None):
            if (self.epoch, batch) != (at_epoch, at_batch):
                return
            if fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if fault == "pause":  # the test sends the signal while this epoch is half done
                open(sys.argv[1] + ".paused", "w").close()
                time.sleep(120)
        def on_epoch_end(self, epoch, logs=None):
            if fault == "worse" and epoch == at_epoch:
                logs["val_loss"] += 1.0  # no improvement: early stopping with patience 1 ends the run here

    original = TrainingPipeline.__init__
    def with_fault(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.callbacks.append(Fault())
    TrainingPipeline.__init__ = with_fault
    sys.exit(main(["--config", sys.argv[1], *sys.argv[5:]]))
    """
)


def write_config(path, demo_data, artifacts, **overrides):
    settings = dict(dropout=0.1, epochs=3, eval_max_images=2, beam_size=1)
    path.write_text(yaml.safe_dump(tiny_config(demo_data, artifacts, **{**settings, **overrides})))
    return path


def train(config_path, *args, check=True):
    return run_python(["-m", "training.train", "--config", str(config_path), *args], check=check, env=ENV)


def train_with_fault(config_path, fault, epoch=0, batch=0, *args):
    return run_python(["-c", FAULTY_RUN, str(config_path), fault, str(epoch), str(batch), *args], check=False, env=ENV)


def metrics(artifacts):
    """metrics.csv without the wall time of each epoch."""
    with open(artifacts / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k != "epoch_time_seconds"} for row in csv.DictReader(handle)]


def digests(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def resume_points(artifacts):
    return [(p.name, json.loads((p / "state.json").read_text())["epoch"]) for p in sorted((artifacts / "resume").iterdir())]


@pytest.fixture(scope="module")
def reference(demo_data, tmp_path_factory):
    """An uninterrupted 3-epoch run: (its config, its artifacts_dir)."""
    work = tmp_path_factory.mktemp("reference")
    config = write_config(work / "config.yaml", demo_data, work / "artifacts")
    train(config)
    assert len(metrics(work / "artifacts")) == 3
    return config, work / "artifacts"


def copy_of(reference, tmp_path):
    """The reference run copied to a new folder, with a config pointing there."""
    config, artifacts = reference
    shutil.copytree(artifacts, tmp_path / "artifacts")
    settings = yaml.safe_load(config.read_text())
    settings["artifacts_dir"] = str(tmp_path / "artifacts")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(settings))
    return tmp_path / "config.yaml", tmp_path / "artifacts"


# -- 0: a rerun never replaces a run silently --------------------------------------------------
def test_reruns_that_change_nothing_or_fail_leave_every_file_byte_identical(reference, tmp_path):
    config, artifacts = reference
    before = digests(artifacts)

    changed = train(config, "--set", "learning_rate=0.002", "--set", "num_layers=2", check=False)
    assert changed.returncode == 2, changed.stderr[-3000:]
    assert "learning_rate: 0.003 -> 0.002" in changed.stderr and "num_layers: 1 -> 2" in changed.stderr
    assert "--fresh" in changed.stderr and "artifacts_dir" in changed.stderr
    assert str(artifacts / "previous_runs") in changed.stderr
    assert digests(artifacts) == before

    typo = train(config, "--set", f"captions_file={tmp_path / 'captons.txt'}", check=False)
    assert typo.returncode == 2 and "'captions_file'" in typo.stderr and "Traceback" not in typo.stderr
    assert digests(artifacts) == before

    bad_glove = tmp_path / "glove.txt"
    bad_glove.write_text("the " + " ".join(["0.1"] * 60) + "\n")
    wrong_dimension = train(config, "--set", f"glove_path={bad_glove}", check=False)
    assert wrong_dimension.returncode == 2 and "embedding_dim is 50" in wrong_dimension.stderr
    assert digests(artifacts) == before

    unchanged = train(config, "--set", "resume=true")
    assert "nothing to do" in unchanged.stderr
    assert digests(artifacts) == before  # run_summary.json included


def test_fresh_moves_the_old_run_aside_and_keeps_the_feature_store(reference, tmp_path):
    config, artifacts = copy_of(reference, tmp_path)
    before = digests(artifacts)
    refused = train(config, "--set", "learning_rate=0.002", check=False)
    kept = artifacts / refused.stderr.split(f"moved to {artifacts}/")[1].split()[0]
    features_inode = (artifacts / "features.npy").stat().st_ino

    # --fresh, and a plateau in epoch 2 that early stopping (patience 1) ends the new run at.
    done = train_with_fault(
        config, "worse", 1, 0, "--fresh", "--set", "learning_rate=0.002", "--set", "early_stopping_patience=1"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"moved to {kept}" in done.stderr
    stays = lambda name: any(fnmatch.fnmatch(name.split("/")[0], pattern) for pattern in KEPT_BY_FRESH)  # noqa: E731
    old = {name: digest for name, digest in before.items() if not stays(name)}
    assert digests(kept) == old  # every file of the old run, byte for byte, where the message said
    assert (artifacts / "features.npy").stat().st_ino == features_inode  # the store stayed, untouched
    assert digests(artifacts)["features.npy"] == before["features.npy"]
    assert len(metrics(artifacts)) == 2 and metrics(artifacts) != metrics(kept)[:2]

    # 1: an early stop ends the run for good; a larger early_stopping_patience reopens it.
    settings = yaml.safe_load(config.read_text())
    settings.update(learning_rate=0.002, early_stopping_patience=1)
    config.write_text(yaml.safe_dump(settings))
    summary = (artifacts / "run_summary.json").read_bytes()
    again = train(config)
    assert "ended by early stopping after epoch 2" in again.stderr and "nothing to do" in again.stderr
    assert (artifacts / "run_summary.json").read_bytes() == summary
    reopened = train(config, "--set", "early_stopping_patience=3")
    assert "reopening the early-stopped run (early_stopping_patience 1 -> 3)" in reopened.stderr
    assert [row["epoch"] for row in metrics(artifacts)] == ["1", "2", "3"]


# -- 1: a larger epochs extends a finished run -------------------------------------------------
def test_a_larger_epochs_extends_a_finished_run_even_with_its_data_moved(reference, tmp_path):
    config, artifacts = copy_of(reference, tmp_path)
    settings = yaml.safe_load(config.read_text())
    moved_captions = shutil.copy(settings["captions_file"], tmp_path / "captions_moved.txt")
    done = train(config, "--set", "epochs=5", "--set", f"captions_file={moved_captions}")
    assert "resuming from" in done.stderr and "extending the finished run from 3 to 5 epochs" in done.stderr
    rows = metrics(artifacts)
    assert [row["epoch"] for row in rows] == ["1", "2", "3", "4", "5"]
    assert rows[:3] == metrics(reference[1])
    assert resume_points(artifacts) == [("epoch_00005", 5)]


# -- 2 and 3: kills and signals; resuming is exact -----------------------------------------------
def copy_terminal(terminal: int, log) -> None:
    """Everything the program writes to the pseudo-terminal `terminal`, into `log`, until it closes."""
    while True:
        try:
            data = os.read(terminal, 65536)
        except OSError:  # EIO: the program's side of the terminal is closed
            return
        if not data:
            return
        log.write(data.decode(errors="replace"))


def interrupt_mid_epoch(config, sig, epoch, terminal=False):
    """Run until epoch `epoch` (from 0) is half done, send `sig` from outside, wait for the end: (returncode, output).
    Output goes to a file, or with `terminal` to a pseudo-terminal as in an interactive shell."""
    paused = config.with_name(config.name + ".paused")
    paused.unlink(missing_ok=True)
    env = child_env(**ENV)
    with open(config.with_suffix(".log"), "w+") as log:
        reader, writer = pty.openpty() if terminal else (None, log)
        process = subprocess.Popen(
            [sys.executable, "-c", FAULTY_RUN, str(config), "pause", str(epoch), "2"],
            cwd=REPO,
            env=env,
            stdout=writer,
            stderr=writer if terminal else subprocess.STDOUT,
            text=True,
        )
        if terminal:
            os.close(writer)
            copier = threading.Thread(target=copy_terminal, args=(reader, log))
            copier.start()
        deadline = time.monotonic() + 300
        while not paused.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert paused.exists(), f"the run never reached the middle of epoch {epoch + 1}"
        process.send_signal(sig)
        returncode = process.wait(timeout=120)
        if terminal:
            copier.join(timeout=60)
            os.close(reader)
        log.seek(0)
        return returncode, log.read()


def test_kill_sigterm_and_sigint_then_resume_write_the_metrics_of_an_uninterrupted_run(reference, demo_data, tmp_path):
    artifacts = tmp_path / "artifacts"
    config = write_config(tmp_path / "config.yaml", demo_data, artifacts)

    killed = train_with_fault(config, "kill", 1, 1)  # epoch 2, second batch: epoch 1 is complete
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert resume_points(artifacts) == [("epoch_00001", 1)]

    # Resumed, then SIGTERM (a preempted machine) half-way through epoch 2 again.
    code, output = interrupt_mid_epoch(config, signal.SIGTERM, epoch=1)
    assert code == 143, output[-3000:]
    assert "1 epoch(s) done" in output and "Traceback" not in output
    assert re.search(r"^error: SIGTERM in epoch 2\. ", output, re.MULTILINE), output[-3000:]  # on a line of its own
    assert "resume point is epoch 1's state" in output
    assert resume_points(artifacts) == [("epoch_00001", 1)]  # never the half-trained epoch 2

    # Resumed, then Ctrl-C half-way through epoch 3.
    code, output = interrupt_mid_epoch(config, signal.SIGINT, epoch=2)
    assert code == 130, output[-3000:]
    assert re.search(r"^error: interrupted in epoch 3\. ", output, re.MULTILINE) and "resume point is epoch 2's state" in output
    assert resume_points(artifacts) == [("epoch_00002", 2)]
    assert [row["epoch"] for row in metrics(artifacts)] == ["1", "2"]
    assert not (artifacts / "image_caption_model_final.keras").exists()

    done = train(config)
    assert "2 epoch(s) done" in done.stderr and "continuing the interrupted run: epochs 3 to 3" in done.stderr
    # Every epoch was trained on the batches, dropout masks and optimizer state of the uninterrupted run.
    assert metrics(artifacts) == metrics(reference[1])
    assert (artifacts / "image_caption_model_final.keras").is_file()
    assert not list((artifacts / "resume").glob("*.tmp"))


def test_on_a_terminal_keras_draws_its_bar_and_the_interrupt_message_begins_a_line(demo_data, tmp_path):
    config = write_config(tmp_path / "config.yaml", demo_data, tmp_path / "artifacts", epochs=1)
    code, output = interrupt_mid_epoch(config, signal.SIGINT, epoch=0, terminal=True)
    assert code == 130, output[-3000:]
    assert "/step - loss: " in output  # Keras' progress bar, drawn on a terminal only
    message = output.index("error: interrupted in epoch 1. ")
    assert output[message - 1] == "\n", repr(output[message - 300 : message + 40])  # not at the end of the bar's line


# -- what a rerun may change, without training -------------------------------------------------
def test_only_keys_that_shape_the_weights_change_a_runs_identity(demo_data, tmp_path):
    from training.configs import config_from_dict
    from training.run.lifecycle import EXTENDING_KEYS, differences, run_identity

    base = tiny_config(demo_data, tmp_path / "a")
    identity = run_identity(config_from_dict(base))
    moved = tmp_path / "captions.txt"
    shutil.copy(base["captions_file"], moved)
    extended = dict(
        base,
        epochs=30,
        early_stopping_patience=9,
        beam_size=5,
        eval_max_images=None,
        run_name="x",
        artifacts_dir=str(tmp_path / "b"),
        images_path=str(tmp_path),
        captions_file=str(moved),
    )
    assert {"epochs", "early_stopping_patience", "artifacts_dir", "features_dir"} <= EXTENDING_KEYS
    assert run_identity(config_from_dict(extended)) == identity
    moved.write_text(moved.read_text().replace("circle", "disc"))
    changed = run_identity(config_from_dict(dict(base, captions_file=str(moved), hidden_dim=64, seed=7)))
    lines = differences(identity, changed)
    assert [line.split(":")[0] for line in lines] == ["captions_file", "hidden_dim", "seed"]
    assert "hidden_dim: 32 -> 64" in lines and "seed: 42 -> 7" in lines


def test_only_an_early_stop_or_a_nan_loss_ends_a_run(demo_data, tmp_path):
    from training.configs import config_from_dict
    from training.run.lifecycle import training_left

    config = config_from_dict(tiny_config(demo_data, tmp_path, epochs=5, early_stopping_patience=2))
    assert training_left({"epoch": 3, "epochs": 3}, config)[0]  # a finished 3-epoch run extends to 5
    assert "extending the finished run from 3 to 5" in training_left({"epoch": 3, "epochs": 3}, config)[1]
    assert not training_left({"epoch": 5, "epochs": 5}, config)[0]
    stopped = {"epoch": 3, "epochs": 5, "ended": "early_stopping", "early_stopping_patience": 2}
    assert not training_left(stopped, config)[0]
    assert training_left(dict(stopped, early_stopping_patience=1), config)[0]  # now patience 2 > 1: reopened
    assert not training_left({"epoch": 1, "epochs": 5, "ended": "nan"}, config)[0]
