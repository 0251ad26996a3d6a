"""Helpers shared by the end-to-end tests: a tiny demo-based config and running our commands for real."""

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SEED_ARTIFACTS = [
    "image_caption_model_final.keras",
    "checkpoint.keras",
    "wordtoix.json",
    "ixtoword.json",
    "features.npy",
    "run_summary.json",
    "metrics.csv",
    "config_snapshot.json",
    "logs",
]


TRAINED_RUN = {"val_caption_images": 500}  # conftest's shared run, over tiny_config: caption metrics each epoch
# Prepended to a script run by run_python: the process then cannot import the package (an exported SavedModel
# must need nothing of it).
BLOCK_TRAINING = """
import sys
class NoTraining:  # the SavedModel must need nothing of the package
    def find_spec(self, name, path=None, target=None):
        if name == "training" or name.startswith("training."):
            raise ImportError("this process must not import " + name)
sys.meta_path.insert(0, NoTraining())
"""


def tiny_config(data_dir: Path, artifacts: Path, **overrides) -> dict:
    config = {
        "images_path": str(data_dir / "Images"),
        "captions_file": str(data_dir / "captions.txt"),
        "glove_path": str(data_dir / "glove.demo.50d.txt"),
        "artifacts_dir": str(artifacts),
        "word_count_threshold": 1,
        "feature_extractor": "PatchGrid",
        "extractor_weights": None,
        "image_size": [32, 32],
        "feature_dim": 192,
        "embedding_dim": 50,
        "train_embeddings": True,
        "hidden_dim": 32,
        "num_layers": 1,
        "num_heads": 2,
        "ff_dim": 64,
        "dropout": 0.0,
        "batch_size": 32,
        "epochs": 3,
        "learning_rate": 0.003,
        "beam_size": 2,
        "eval_max_images": 12,
        # No val_bleu4/val_cider captions each epoch (tracing a greedy search per process): the shared
        # trained run (conftest.py), the SCST and the distributed tests turn them on.
        "val_caption_images": 0,
    }
    config.update(overrides)
    return config


def assert_readme_shows(example: str, marker: str) -> None:
    """The README that shows `marker` shows `example` verbatim (skipped while no README shows it)."""
    import pytest

    readmes = [p for p in (REPO / "training" / "README.md", REPO / "README.md") if p.is_file()]
    texts = [p.read_text() for p in readmes if marker in p.read_text()]
    if not texts:
        pytest.skip(f"no README in the repository shows the {marker} example yet")
    assert any(example.strip() in text for text in texts)


def write_config(path: Path, data_dir: Path, artifacts: Path, **overrides) -> Path:
    """`tiny_config(data_dir, artifacts, **overrides)` written as YAML to `path`."""
    Path(path).write_text(yaml.safe_dump(tiny_config(data_dir, artifacts, **overrides)))
    return Path(path)


# A user callback is the public way into the training loop; tests inject faults (NaN, full disk, kill) with one.
TRAIN_WITH_CALLBACK = """
import sys
from training.train import main, TrainingPipeline
original = TrainingPipeline.__init__
def with_callback(self, *args, **kwargs):
    original(self, *args, **kwargs)
    self.callbacks.append(Fault())
TrainingPipeline.__init__ = with_callback
sys.exit(main(["--config", sys.argv[1]]))
"""


def train_with_callback(callback_code: str, config_path: Path, *args, env=None):
    """`python -m training.train --config config_path` in its own process, with the keras callback class
    `Fault` that `callback_code` defines added to the run; `args` reach that code as sys.argv[2:]."""
    script = "import sys\n" + textwrap.dedent(callback_code) + TRAIN_WITH_CALLBACK
    return run_python(["-c", script, str(config_path), *map(str, args)], check=False, env=env)


def _path_without_java() -> str:
    """A PATH that finds this interpreter and git but not java (a folder of links, made once per process)."""
    folder = Path(tempfile.mkdtemp(prefix="no-java-bin-"))
    atexit.register(shutil.rmtree, folder, True)
    git = shutil.which("git")
    if git:
        (folder / "git").symlink_to(git)
    return os.pathsep.join([os.path.dirname(sys.executable), str(folder)])


NO_JAVA_PATH = _path_without_java()


def child_env(java: bool = False, **overrides) -> dict:
    """The environment of a command run by a test. Without `java` the run's evaluation finds no Java, so it
    skips METEOR and the PTB tokenizer: their two JVMs take ~10-25 s per evaluation, and one end-to-end run
    (test_pipeline's) and test_metrics check the scores that need them."""
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    if not java:
        env["PATH"] = NO_JAVA_PATH
    return {**env, **overrides}


def run_python(code_or_args, cwd=REPO, check=True, timeout=600, env=None, java=False, merge_stderr=False):
    """Run this interpreter; `merge_stderr` sends stderr into stdout, in order, as `command > log 2>&1` does."""
    args = ["-c", code_or_args] if isinstance(code_or_args, str) else code_or_args
    done = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        text=True,
        timeout=timeout,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        env=child_env(java, **(env or {})),
    )
    if check:
        assert done.returncode == 0, f"stdout:\n{done.stdout[-5000:]}\nstderr:\n{(done.stderr or '')[-5000:]}"
    return done


def save_keras_application(path: Path, images, application: str = "MobileNetV3Small", seed: int = 0) -> Path:
    """A keras.applications network without its classifier, randomly initialised (seeded), saved as a weights file.

    Its batch-norm statistics are those of `images` (float (N, H, W, 3) in [0, 255], at the size it will see), as
    a trained network's fit its data: left at their initial values, the random network's outputs shrink layer by
    layer to ~1e-10, zeros once stored as float16, and every image would look alike."""
    import keras

    keras.utils.set_random_seed(seed)
    model = getattr(keras.applications, application)(include_top=False, weights=None, input_shape=images.shape[1:])
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0  # the moving statistics become this batch's
    model(images, training=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(run, *args):
    """`python -m training.serve --artifacts run *args` on a free port of 127.0.0.1: (its url, the process) once it
    answers /health; killed on leaving."""
    import httpx

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "training.serve", "--artifacts", str(run), "--port", str(port), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 180
    try:
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.25)
        assert process.poll() is None, process.stdout.read()
        yield url, process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def saved_model_captions(saved_model: Path, paths) -> list[list]:
    """[caption, score] of each image file from an exported SavedModel, loaded in a process that cannot import
    `training` (BLOCK_TRAINING)."""
    import json

    code = (
        BLOCK_TRAINING
        + f"""
import json
import tensorflow as tf
serve = tf.saved_model.load({str(saved_model)!r}).signatures["serving_default"]
out = serve(images=tf.constant([open(p, "rb").read() for p in {list(paths)!r}], tf.string))
print(json.dumps([[c.decode(), float(s)] for c, s in zip(out["captions"].numpy(), out["scores"].numpy())]))
"""
    )
    return json.loads(run_python(code).stdout.splitlines()[-1])


def served_captions(url: str, paths, content_type: str) -> list[dict]:
    """The service's answer to a POST /caption of each image file, one request at a time."""
    import httpx

    return [
        httpx.post(url + "/caption", content=Path(p).read_bytes(), headers={"Content-Type": content_type}, timeout=60).json()
        for p in paths
    ]
