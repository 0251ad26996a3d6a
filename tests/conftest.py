"""Shared test fixtures: the real Flickr8k captions file when present, the demo data, one trained run, quiet TensorFlow.

The suite runs on two pytest-xdist workers (pyproject.toml), whole files to a worker, so a module's
fixtures are made once. The session fixtures below are made once for the whole session: the first
worker to need one makes it, the other waits for it and reuses it.
"""

import json
import os
from pathlib import Path

import pytest
from filelock import FileLock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
FLICKR8K_CAPTIONS = Path(os.environ.get("FLICKR8K_CAPTIONS", REPO.parent / "shared" / "data" / "flickr8k_captions.txt"))


# The files that take longest go first: each goes whole to one of the two workers, and a long file
# taken last would leave the other worker idle. test_serving trains the shared run before test_pipeline reads it.
SLOW_FIRST = [
    "test_long_runs.py",
    "test_faults.py",
    "test_serving.py",
    "test_run_folder.py",
    "test_bench.py",
    "test_backbones.py",
    "test_float16.py",
    "test_scst.py",
    "test_pipeline.py",
    "test_lstm_run.py",
    "test_distributed.py",
    "test_metrics.py",
]


def pytest_collection_modifyitems(items):
    rank = {name: position for position, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order is kept


def made_once(tmp_path_factory, name: str, make) -> object:
    """`make(folder)` run once per test session, across xdist workers; returns what it returned (JSON)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's folder, shared by its workers
    folder = root / name
    with FileLock(f"{folder}.lock"):
        done = root / f"{name}.json"
        if not done.is_file():
            folder.mkdir(exist_ok=True)
            done.write_text(json.dumps(make(folder)))
        return json.loads(done.read_text())


@pytest.fixture(scope="session")
def flickr8k_captions() -> Path:
    if not FLICKR8K_CAPTIONS.is_file():
        pytest.skip(f"real Flickr8k captions not found at {FLICKR8K_CAPTIONS} (set FLICKR8K_CAPTIONS)")
    return FLICKR8K_CAPTIONS


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """A small generated demo set (120 images of 32 px), shared by the end-to-end tests."""

    def make(folder):
        from training.data.demo import generate_demo_dataset

        generate_demo_dataset(folder, num_images=120, seed=1, image_size=32)
        return str(folder)

    return Path(made_once(tmp_path_factory, "demo", make))


@pytest.fixture(scope="session")
def trained_run(demo_data, tmp_path_factory):
    """One finished run of `tiny_config`'s defaults (3 epochs), trained once for every module that only reads
    a run: (its artifacts_dir, what the command printed to stdout and stderr, in order as `> log 2>&1` keeps
    them). Its evaluation runs with Java (METEOR, PTB tokens); oneDNN is off, so a second run of the same
    config must give identical losses. Tests that change a run make their own."""

    def make(work):
        from helpers import TRAINED_RUN, run_python, write_config

        config = write_config(work / "config.yaml", demo_data, work / "artifacts", **TRAINED_RUN)
        done = run_python(
            ["-m", "training.train", "--config", str(config)], java=True, env={"TF_ENABLE_ONEDNN_OPTS": "0"}, merge_stderr=True
        )
        return [str(work / "artifacts"), done.stdout]

    artifacts, output = made_once(tmp_path_factory, "run", make)
    return Path(artifacts), output
