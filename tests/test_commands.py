"""The commands as a user meets them: where evaluate writes, any working directory, argument and input errors,
exit codes, --log-level, and loading a saved model in a fresh process. One tiny trained run serves them all."""

import csv
import json
import subprocess
import sys

import pytest
import yaml
from helpers import REPO, run_python, tiny_config

NOISE = ("oneDNN", "I0000", "E0000", "absl::InitializeLog")  # TensorFlow's start-up lines


@pytest.fixture(scope="module")
def run(demo_data, tmp_path_factory):
    """A finished one-epoch run, trained once for this module."""
    work = tmp_path_factory.mktemp("commands")
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_config(demo_data, work / "artifacts", epochs=1, val_caption_images=4)))
    run_python(["-m", "training.train", "--config", str(path)])
    return work / "artifacts"


def command(args, cwd=REPO, level=None):
    """A command in its own process, with the environment a user has (no TF_CPP_MIN_LOG_LEVEL of ours)."""
    env = {k: v for k, v in __import__("os").environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = str(REPO)
    extra = ["--log-level", level] if level else []
    return subprocess.run([sys.executable, "-m", *args, *extra], cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


def test_evaluate_writes_beside_the_run_from_another_directory(run, tmp_path):
    own = (run / "predictions_test.json").read_bytes()
    done = command(["training.evaluate", "--artifacts", str(run), "--split", "val", "--beam", "1"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    written = run / "predictions_val_beam1.json"
    assert "val split, beam 1" in done.stdout and str(written) in done.stdout
    assert (run / "predictions_test.json").read_bytes() == own  # the run's own results are untouched
    result = json.loads(written.read_text())
    assert result["split"] == "val" and result["beam_size"] == 1 and result["captions"]
    with open(run / "logs" / "bleu_scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    blocks = {(r["split"], r["beam"]) for r in rows}
    assert blocks == {("test", "2"), ("val", "1")}  # the run's own block (beam_size 2) is kept
    assert not any(line.startswith(NOISE) for line in done.stderr.splitlines())


def test_report_from_another_directory_finds_the_images_and_names_the_beam(run, tmp_path):
    done = command(["training.report", "--artifacts", str(run)], cwd=tmp_path)
    assert done.returncode == 0 and "report written" in done.stdout, done.stderr
    assert "not found" not in done.stderr
    page = (run / "report.html").read_text()
    assert "image not found" not in page and "Scores (test split, beam 2)" in page
    shown = json.loads((run / "predictions_test.json").read_text())["scores"]
    assert f"{shown['bleu4']:.4f}" in page  # the scores of the captions the gallery shows


def test_report_says_when_the_images_are_missing(run, tmp_path):
    done = command(["training.report", "--artifacts", str(run), "--images", str(tmp_path / "nowhere")])
    assert done.returncode == 0 and "not found in" in done.stderr and "--images" in done.stderr


def test_the_snapshot_holds_absolute_paths(run):
    data = json.loads((run / "config_snapshot.json").read_text())["data"]
    for key in ("images_path", "captions_file", "glove_path", "artifacts_dir"):
        assert data[key].startswith("/"), (key, data[key])


@pytest.mark.parametrize(
    "args, problem",
    [
        (["training.caption", "x.png", "--artifacts", "a", "--beam", "0"], "--beam: 0 is out of range"),
        (["training.caption", "x.png", "--artifacts", "a", "--beam", "-2"], "--beam: -2 is out of range"),
        (["training.evaluate", "--artifacts", "a", "--log-level", "foo"], "--log-level: invalid choice: 'foo'"),
        (["training.train", "--log-level", "loud"], "--log-level: invalid choice: 'loud'"),
    ],
)
def test_argument_errors_are_usage_errors(args, problem):
    done = command(args)
    assert done.returncode == 2 and problem in done.stderr and "usage:" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_input_errors_name_the_real_problem(demo_data, tmp_path):
    folder_as_captions = tiny_config(demo_data, tmp_path / "run", captions_file=str(demo_data))
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(folder_as_captions))
    done = command(["training.train", "--config", str(tmp_path / "a.yaml")])
    assert done.returncode == 2 and "'captions_file' must be a file" in done.stderr and "is a folder" in done.stderr

    (tmp_path / "taken").write_text("a file where the run folder should go")
    file_as_run = tiny_config(demo_data, tmp_path / "taken")
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(file_as_run))
    done = command(["training.train", "--config", str(tmp_path / "b.yaml")])
    assert done.returncode == 2 and "'artifacts_dir' must be a folder" in done.stderr and "Free space" not in done.stderr
    assert not (tmp_path / "run").exists()

    done = command(["training.data.demo", str(tmp_path / "taken"), "--images", "2"])
    assert done.returncode == 2 and "is a file, not a folder" in done.stderr and "Traceback" not in done.stderr

    done = command(["training.evaluate", "--artifacts", str(tmp_path / "taken")])
    assert done.returncode == 2 and "a file" in done.stderr and "Traceback" not in done.stderr


def test_tensorflow_start_up_lines_show_only_at_debug(run, demo_data):
    image = str(demo_data / "Images" / "demo_00000.png")
    quiet = command(["training.caption", image, "--artifacts", str(run)])
    loud = command(["training.caption", image, "--artifacts", str(run)], level="debug")
    assert quiet.returncode == 0 and loud.returncode == 0, quiet.stderr + loud.stderr
    assert quiet.stdout == loud.stdout
    assert not any(word in quiet.stderr for word in NOISE), quiet.stderr
    assert any(word in loud.stderr for word in NOISE), loud.stderr


def test_saved_models_load_in_a_fresh_process(run, tmp_path):
    # As the README says: training.load_model, or keras.saving.load_model once training's classes are imported.
    code = (
        "import sys, keras, training\n"
        "model = training.load_model(sys.argv[1])\n"
        "from training.utils.model_versioning import ModelVersionManager\n"
        "manager = ModelVersionManager(sys.argv[2])\n"
        "manager.register_version('1.0.0', sys.argv[1], sys.argv[3], run_id='r', metrics={})\n"
        "print(type(model).__name__, type(manager.load_model('1.0.0')).__name__)\n"
    )
    done = run_python(["-c", code, str(run / "image_caption_model_final.keras"), str(tmp_path / "registry"), str(run)])
    assert done.stdout.split() == ["CaptionModel", "CaptionModel"]
    code = "import sys, keras\nimport training.captioner\nprint(type(keras.saving.load_model(sys.argv[1])).__name__)\n"
    assert run_python(["-c", code, str(run / "image_caption_model_final.keras")]).stdout.split() == ["CaptionModel"]


def test_the_evaluator_writes_and_prints_nothing_and_captions_as_the_captioner_does(run, tmp_path, monkeypatch, capsys):
    import numpy as np

    from training.captioner import Captioner
    from training.data.caption_loader import CaptionLoader
    from training.data.dataset import DatasetBuilder
    from training.data.preprocessor import CaptionPreprocessor
    from training.evaluation.evaluator import Evaluator, split_images
    from training.evaluation.loading import load_trained
    from training.evaluation.split import evaluate_split, write_per_image_rows, write_predictions_file
    from training.features import FeatureStore

    monkeypatch.chdir(tmp_path)
    config, model, tokenizer = load_trained(run)
    store = FeatureStore.open(run)
    captions = CaptionPreprocessor().process(CaptionLoader(config.data.captions_format).load(config.data.captions_file))
    test = {i: captions[i] for i in json.loads((run / "splits.json").read_text())["test"]}
    builder = DatasetBuilder(store.features, store.index, tokenizer, model.max_length)
    features, references = split_images(builder, test)
    folder = {path: path.stat().st_mtime_ns for path in run.rglob("*")}
    capsys.readouterr()

    evaluator = Evaluator(tokenizer, features, references)
    result = evaluator.evaluate(model, beam_size=2)
    assert capsys.readouterr().out == "" and not any(tmp_path.iterdir())
    assert {path: path.stat().st_mtime_ns for path in run.rglob("*")} == folder
    # The Captioner pads its batches the same way, so `training.caption` gives the very captions the scores rate.
    captioner = Captioner.from_run(model, tokenizer, config, beam_size=2, extractor_weights=None)
    expected = captioner.caption(features, attention=True)
    assert [(c.text, c.score) for c in result.captions] == [(c.text, c.score) for c in expected]
    assert all(np.array_equal(a.attention, b.attention) for a, b in zip(result.captions, expected))
    # A run's final scores are the evaluator's result and its writers: the same files, byte for byte.
    evaluate_split(model, tokenizer, builder, test, config, tmp_path / "run", beam_size=2, show=0)
    write_predictions_file(result, tmp_path / "mine", "test")
    write_per_image_rows(result, tmp_path / "mine", "test")
    for name in ("predictions_test.json", "logs/bleu_scores.csv"):
        assert (tmp_path / "mine" / name).read_bytes() == (tmp_path / "run" / name).read_bytes()
