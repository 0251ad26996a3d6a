"""Run folders and the feature store, with real training runs: features shared across runs and reused
whatever the seed or split, new images extracted alone, skipped images reported, one run per folder."""

import csv
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import yaml
from helpers import REPO, SEED_ARTIFACTS, child_env, run_python, tiny_config

from training.features import FeatureStore

QUICK = {"epochs": 1, "eval_max_images": 2, "beam_size": 1, "max_bad_image_fraction": 0.05}


def write_config(path, config):
    path.write_text(yaml.safe_dump(config))
    return path


def train(config_path, *args):
    done = run_python(["-m", "training.train", "--config", str(config_path), *args])
    return done.stdout + done.stderr


def store_counts(log):
    """(reused, extracted, skipped) from the run's feature-store log line."""
    found = re.search(r"feature store .*: (\d+) image\(s\) reused, (\d+) extracted(?:, (\d+) unreadable skipped)?", log)
    assert found, log[-3000:]
    return tuple(int(group or 0) for group in found.groups())


def test_features_are_reused_across_seeds_splits_and_runs(demo_data, tmp_path):
    images = tmp_path / "Images"
    shutil.copytree(demo_data / "Images", images)
    (images / "demo_00003.png").write_bytes(b"")  # unreadable: skipped, and said so
    with open(demo_data / "captions.txt", newline="") as handle:
        rows = list(csv.reader(handle))
    all_images = list(dict.fromkeys(row[0] for row in rows[1:]))
    held_back = set(all_images[-10:])
    with open(tmp_path / "captions_110.txt", "w", newline="") as handle:
        csv.writer(handle).writerows([rows[0]] + [row for row in rows[1:] if row[0] not in held_back])
    first = tiny_config(
        demo_data, tmp_path / "first", images_path=str(images), captions_file=str(tmp_path / "captions_110.txt"), **QUICK
    )
    config = write_config(tmp_path / "first.yaml", first)

    log = train(config)
    assert store_counts(log) == (0, 109, 1)
    assert "skipping 1 unreadable image(s) of 110" in log and f"{images / 'demo_00003.png'}: empty file" in log
    summary = json.loads((tmp_path / "first" / "run_summary.json").read_text())
    assert summary["bad_images"] == [
        {"image": "demo_00003.png", "path": str(images / "demo_00003.png"), "reason": "empty file (0 bytes)"}
    ]
    store_file = tmp_path / "first" / "features.npy"
    stamp = store_file.stat().st_mtime_ns

    # A new seed and new split ratios, from scratch in the same folder: every feature is reused.
    log = train(config, "--fresh", "--set", "seed=7", "--set", "train_split=0.7", "--set", "val_split=0.2")
    assert store_counts(log) == (109, 0, 1)
    assert store_file.stat().st_mtime_ns == stamp

    # Another run sharing that store, with 10 more images in its captions file: only those are extracted.
    second = dict(
        first,
        artifacts_dir=str(tmp_path / "second"),
        features_dir=str(tmp_path / "first"),
        captions_file=str(demo_data / "captions.txt"),
    )
    log = train(write_config(tmp_path / "second.yaml", second))
    assert store_counts(log) == (109, 10, 1)
    store = FeatureStore.open(tmp_path / "first")
    assert len(store) == 119 and set(store.index) == set(all_images) - {"demo_00003.png"}
    assert (tmp_path / "second" / "features.npy").resolve() == store_file.resolve()  # the run folder links to it
    assert FeatureStore.open(tmp_path / "second").image_ids == store.image_ids
    assert not (tmp_path / "second" / "features.partial.npy").exists()
    np.testing.assert_array_equal(np.asarray(store.features[0]), FeatureStore.open(tmp_path / "first").get(store.image_ids[0]))


HOLD = """
import sys, time
from training.run.run_lock import hold_run_folder
with hold_run_folder(sys.argv[1]):
    print("holding", flush=True)
    time.sleep(600)
"""


def start(args):
    return subprocess.Popen(
        [sys.executable, *args], cwd=REPO, env=child_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def test_one_run_per_folder_and_a_killed_run_does_not_block(demo_data, tmp_path):
    artifacts = tmp_path / "artifacts"
    # A run killed outright leaves its lock files behind.
    killed = start(["-c", HOLD, str(artifacts)])
    assert killed.stdout.readline().strip() == "holding", killed.stderr.read()
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert (artifacts / ".run.lock").exists() and json.loads((artifacts / ".run.lock.json").read_text())["pid"] == killed.pid

    config = write_config(tmp_path / "config.yaml", tiny_config(demo_data, artifacts, **dict(QUICK, epochs=2)))
    first = start(["-m", "training.train", "--config", str(config)])
    try:
        deadline = time.monotonic() + 120
        while True:  # wait until the first run holds the folder
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first run never took the folder"
            try:
                if json.loads((artifacts / ".run.lock.json").read_text())["pid"] == first.pid:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        started = time.monotonic()
        second = run_python(
            ["-m", "training.train", "--config", str(config), "--set", "run_name=intruder"], check=False, timeout=120
        )
        elapsed = time.monotonic() - started
        assert first.poll() is None, "the first run ended before the second one was refused: nothing was tested"
    finally:
        stdout, stderr = first.communicate(timeout=600)
    assert second.returncode == 2 and elapsed < 30, (second.returncode, elapsed, second.stderr[-2000:])
    message = second.stderr
    assert f"artifacts_dir {artifacts.resolve()} is in use by another training run" in message
    assert f"process {first.pid} on {socket.gethostname()}, started 20" in message and "train.py --config" in message
    assert "Traceback" not in message

    assert first.returncode == 0, stderr[-3000:]
    for name in SEED_ARTIFACTS:
        assert (artifacts / name).exists(), name
    assert json.loads((artifacts / "run_summary.json").read_text())["metadata"]["run_name"] != "intruder"
    assert json.loads((artifacts / "config_snapshot.json").read_text())["training"]["run_name"] is None
    assert not (artifacts / ".run.lock.json").exists()  # the holder's details go with it


def test_only_the_chief_of_a_multi_worker_run_holds_the_folder(monkeypatch):
    from training.configs import config_from_dict
    from training.train import _is_chief_task

    def chief(task, cluster, distribution="multi_worker"):
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task}))
        return _is_chief_task(config_from_dict({"distribution": distribution}))

    workers = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    assert chief({"type": "worker", "index": 0}, workers) and not chief({"type": "worker", "index": 1}, workers)
    with_chief = dict(workers, chief=["127.0.0.1:3"])
    assert chief({"type": "chief", "index": 0}, with_chief) and not chief({"type": "worker", "index": 0}, with_chief)
    assert chief({"type": "worker", "index": 1}, workers, distribution="none")  # TF_CONFIG unused without multi_worker
