"""Tests for the model registry: the README example, semver, overwrite, checksums, stages, two writers at once."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_readme_shows

from training.run.model_versioning import ModelIntegrityError, ModelVersionManager, semver_key

REPO = Path(__file__).resolve().parents[1]

# Copied verbatim from the seed README ("Model Versioning"); it must run as written.
README_VERSIONING_EXAMPLE = """
from training.utils.model_versioning import ModelVersionManager

manager = ModelVersionManager("models/")

# Register a new version
manager.register_version(
    version="1.0.0",
    model_path="artifacts/model.keras",
    vocab_dir="artifacts/",
    run_id="run_001",
    metrics={"bleu4": 0.25, "val_loss": 2.3},
    description="Initial release",
)

# Get latest version
latest = manager.get_latest_version()

# Compare versions
comparison = manager.compare_versions("1.0.0", "1.1.0")
"""


@pytest.fixture(scope="module")
def keras_model_file(tmp_path_factory):
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(path)
    return path


def make_artifacts(directory, model_bytes=b"tiny model", extra=None):
    """A fake run's artifacts: a model file and the vocabulary JSONs."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.keras").write_bytes(model_bytes)
    (directory / "wordtoix.json").write_text(json.dumps({"<pad>": 0, "startseq": 1}))
    (directory / "ixtoword.json").write_text(json.dumps({"0": "<pad>", "1": "startseq"}))
    for name, text in (extra or {}).items():
        (directory / name).write_text(text)
    return directory


def register(manager, version, artifacts, **kwargs):
    kwargs.setdefault("metrics", {"bleu4": 0.2})
    return manager.register_version(version, artifacts / "model.keras", artifacts, run_id=f"run-{version}", **kwargs)


def test_readme_versioning_example_runs_as_written(tmp_path, monkeypatch, keras_model_file):
    monkeypatch.chdir(tmp_path)
    artifacts = make_artifacts(tmp_path / "artifacts", model_bytes=keras_model_file.read_bytes())
    ModelVersionManager("models/").register_version(
        "1.1.0", artifacts / "model.keras", artifacts, run_id="run_002", metrics={"bleu4": 0.3, "meteor": 0.2}
    )
    namespace = {}
    exec(README_VERSIONING_EXAMPLE, namespace)

    latest, comparison = namespace["latest"], namespace["comparison"]
    assert latest["version"] == "1.1.0" and latest["run_id"] == "run_002"
    assert {"version", "model_path", "vocab_files", "metrics", "stage", "created_at", "run_id", "description"} <= set(latest)
    assert comparison["deltas"]["bleu4"] == pytest.approx(0.05)
    assert comparison["only_in_a"] == ["val_loss"] and comparison["only_in_b"] == ["meteor"]
    first = namespace["manager"].get_version("1.0.0")
    assert first["description"] == "Initial release" and first["stage"] == "none"
    assert Path(first["model_path"]).read_bytes() == keras_model_file.read_bytes()
    assert set(first["vocab_files"]) == {"wordtoix.json", "ixtoword.json"}

    # The registered copy loads as a working Keras model after its checksums are verified.
    model = namespace["manager"].load_model("1.0.0")
    assert model.predict(np.ones((1, 3), "float32"), verbose=0).shape == (1, 2)


def test_readme_example_matches_repo_readme():
    assert_readme_shows(README_VERSIONING_EXAMPLE, "ModelVersionManager(")


@pytest.mark.parametrize("bad", ["1.0", "v1.0.0", "1.0.0.0", "01.0.0", "1.0.0-", "1.0.0+build", "1.0.0-rc..1", "latest"])
def test_invalid_versions_are_rejected(tmp_path, bad):
    manager = ModelVersionManager(tmp_path / "models")
    with pytest.raises(ValueError, match="not a semantic version"):
        register(manager, bad, make_artifacts(tmp_path / "a"))
    assert manager.list_versions() == []


def test_versions_sort_by_semver_precedence(tmp_path):
    ordered = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.2.0",
        "1.10.0",
        "2.0.0-rc.1",
    ]
    assert sorted(reversed(ordered), key=semver_key) == ordered
    manager = ModelVersionManager(tmp_path / "models")
    artifacts = make_artifacts(tmp_path / "a")
    for version in ["1.10.0", "1.2.0", "2.0.0-rc.1", "1.0.0"]:
        register(manager, version, artifacts)
    assert [v["version"] for v in manager.list_versions()] == ["1.0.0", "1.2.0", "1.10.0", "2.0.0-rc.1"]
    assert manager.get_latest_version()["version"] == "2.0.0-rc.1"
    assert ModelVersionManager(tmp_path / "empty").get_latest_version() is None


def test_registered_version_is_never_overwritten_silently(tmp_path):
    manager = ModelVersionManager(tmp_path / "models")
    register(manager, "1.0.0", make_artifacts(tmp_path / "a", b"first"), metrics={"bleu4": 0.1})
    second = make_artifacts(tmp_path / "b", b"second")
    with pytest.raises(FileExistsError, match="1.0.0 is already registered.*overwrite=True"):
        register(manager, "1.0.0", second, metrics={"bleu4": 0.9})
    assert Path(manager.get_version("1.0.0")["model_path"]).read_bytes() == b"first"

    record = register(manager, "1.0.0", second, metrics={"bleu4": 0.9}, overwrite=True)
    assert Path(record["model_path"]).read_bytes() == b"second"
    assert manager.verify("1.0.0")["metrics"] == {"bleu4": 0.9}
    assert [p.name for p in (tmp_path / "models").iterdir() if p.name.startswith(".") and p.is_dir()] == []


def test_copies_run_jsons_and_requires_the_vocabulary(tmp_path):
    manager = ModelVersionManager(tmp_path / "models")
    artifacts = make_artifacts(tmp_path / "a", extra={"config_snapshot.json": "{}", "notes.txt": "x"})
    record = register(manager, "1.0.0", artifacts)
    assert sorted(record["vocab_files"]) == ["config_snapshot.json", "ixtoword.json", "wordtoix.json"]
    manifest = json.loads((Path(record["path"]) / "manifest.json").read_text())
    assert sorted(manifest["checksums"]) == ["config_snapshot.json", "ixtoword.json", "model.keras", "wordtoix.json"]
    assert all(len(digest) == 64 for digest in manifest["checksums"].values())

    (artifacts / "ixtoword.json").unlink()
    with pytest.raises(FileNotFoundError, match="ixtoword.json"):
        register(manager, "1.0.1", artifacts)
    with pytest.raises(FileNotFoundError, match="missing.keras"):
        manager.register_version("1.0.2", artifacts / "missing.keras", artifacts, "r", {})


def test_tampered_files_are_detected_before_loading(tmp_path, keras_model_file):
    manager = ModelVersionManager(tmp_path / "models")
    artifacts = make_artifacts(tmp_path / "a", model_bytes=keras_model_file.read_bytes())
    record = register(manager, "1.0.0", artifacts)
    manager.verify("1.0.0")

    model_path = Path(record["model_path"])
    model_path.write_bytes(model_path.read_bytes() + b"\0")
    with pytest.raises(ModelIntegrityError, match=r"checksum mismatch for .*1\.0\.0/model\.keras"):
        manager.load_model("1.0.0")

    model_path.write_bytes(keras_model_file.read_bytes())
    Path(record["vocab_files"]["wordtoix.json"]).write_text("{}")
    with pytest.raises(ModelIntegrityError, match="wordtoix.json"):
        manager.verify("1.0.0")
    Path(record["vocab_files"]["wordtoix.json"]).unlink()
    with pytest.raises(ModelIntegrityError, match="wordtoix.json is missing"):
        manager.verify("1.0.0")


def test_promote_keeps_one_production_version(tmp_path):
    manager = ModelVersionManager(tmp_path / "models")
    artifacts = make_artifacts(tmp_path / "a")
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        register(manager, version, artifacts)
    manager.promote("1.0.0", "production")
    manager.promote("1.1.0", "staging")
    assert manager.promote("1.1.0", "production")["stage"] == "production"
    assert {v["version"]: v["stage"] for v in manager.list_versions()} == {
        "1.0.0": "archived",
        "1.1.0": "production",
        "1.2.0": "none",
    }
    register(manager, "2.0.0", artifacts, stage="production")  # registering straight to production also demotes
    assert [v["version"] for v in manager.list_versions() if v["stage"] == "production"] == ["2.0.0"]
    with pytest.raises(ValueError, match="stage 'prod' is not one of none, staging, production, archived"):
        manager.promote("1.2.0", "prod")
    with pytest.raises(KeyError, match="'9.9.9' is not registered"):
        manager.promote("9.9.9", "staging")


WRITER = """
import sys, time
from pathlib import Path
from training.run.model_versioning import ModelVersionManager
root, artifacts, major, ready, go = sys.argv[1:]
Path(ready).touch()
while not Path(go).exists():  # start both writers together so their registrations really interleave
    time.sleep(0.005)
manager = ModelVersionManager(root)
for patch in range(50):
    manager.register_version(f"{major}.0.{patch}", Path(artifacts) / "model.keras", artifacts,
                             run_id=f"writer-{major}", metrics={"bleu4": patch / 100})
"""


def test_two_processes_register_concurrently(tmp_path):
    root = tmp_path / "models"
    go = tmp_path / "go"
    writers = []
    for major in (1, 2):
        artifacts = make_artifacts(tmp_path / f"artifacts{major}", model_bytes=f"model {major}".encode())
        ready = tmp_path / f"ready{major}"
        writers.append(
            (
                ready,
                subprocess.Popen(
                    [sys.executable, "-c", WRITER, str(root), str(artifacts), str(major), str(ready), str(go)],
                    cwd=REPO,
                    stderr=subprocess.PIPE,
                    text=True,
                ),
            )
        )
    deadline = time.monotonic() + 30
    while not all(ready.exists() for ready, _ in writers) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    for _, process in writers:
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr

    manager = ModelVersionManager(root)
    versions = manager.list_versions()
    assert len(versions) == 100
    assert [v["version"] for v in versions] == [f"{m}.0.{p}" for m in (1, 2) for p in range(50)]
    for version in versions:
        manager.verify(version["version"])
        assert Path(version["model_path"]).read_bytes() == f"model {version['version'][0]}".encode()
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == [".registry.lock"]
