"""The whole pipeline on a small generated demo set: train, artifacts, rerun, caption, evaluate (kills and resumes: test_long_runs)."""

import csv
import json
import re
import shutil

import pytest
import yaml
from helpers import SEED_ARTIFACTS, TRAINED_RUN, run_python, write_config


@pytest.fixture(scope="module")
def trained(trained_run):
    return trained_run


def read_metrics(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_run_leaves_every_seed_artifact_and_prints_scores(trained):
    artifacts, stdout = trained
    for name in SEED_ARTIFACTS:
        assert (artifacts / name).exists(), name
    assert "bleu4" in stdout and "predicted:" in stdout and "reference:" in stdout
    rows = read_metrics(artifacts / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert list(rows[0])[:5] == ["epoch", "train_loss", "val_loss", "learning_rate", "epoch_time_seconds"]
    assert all(0 <= float(r["val_bleu4"]) <= 1 and float(r["val_cider"]) >= 0 for r in rows)  # caption metrics each epoch
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    summary = json.loads((artifacts / "run_summary.json").read_text())
    assert set(summary["bleu_scores"]) == {"test_bleu1", "test_bleu2", "test_bleu3", "test_bleu4"}
    assert 0.0 <= summary["bleu_scores"]["test_bleu4"] <= 1.0
    # The one end-to-end run evaluated with Java: METEOR and the PTB tokenizer ran in the pipeline.
    expected = {"rouge_l", "cider"} | ({"meteor"} if shutil.which("java") else set())
    assert expected <= set(summary["scores"]), summary["scores"]
    predictions = json.loads((artifacts / "predictions_test.json").read_text())
    assert len(predictions["captions"]) == 12
    for record in predictions["captions"]:
        assert not {"startseq", "endseq", "<pad>"} & set(record["prediction"].split())
    assert (artifacts / "logs" / "bleu_scores.csv").is_file()


def test_a_run_writing_to_a_pipe_prints_one_line_per_epoch_and_no_progress_bar(trained):
    _, output = trained  # stdout and stderr to one pipe, as `make demo > log 2>&1` has them
    assert "\r" not in output and "\b" not in output and "━" not in output, output[:3000]
    epochs = [line for line in output.splitlines() if re.search(r"\bepoch\b", line, re.IGNORECASE)]
    assert len(epochs) == 3, epochs
    for number, line in enumerate(epochs, start=1):  # the epoch, its losses and validation scores, its time
        assert re.search(
            rf": epoch {number}/3 \| loss \d\.\d{{4}} .*\| val_loss \d\.\d{{4}} .*\| val_bleu4 \d\.\d{{4}} "
            r"\| val_cider \d+\.\d{4} (\| val_\w+ \d+\.\d{4} )*\| lr [^|]+ \| \d+\.\ds \(val captions \d+\.\ds\) \|",
            line,
        ), line


def test_rerun_of_a_finished_run_trains_no_further(trained, tmp_path):
    artifacts, _ = trained
    before = read_metrics(artifacts / "metrics.csv")
    config = yaml.safe_load((artifacts.parent / "config.yaml").read_text())
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    done = run_python(["-m", "training.train", "--config", str(path)])
    assert "nothing to fit" in done.stdout + done.stderr
    assert read_metrics(artifacts / "metrics.csv") == before


def test_caption_command_on_a_new_image(trained, demo_data, tmp_path):
    artifacts, _ = trained
    image = demo_data / "Images" / "demo_00000.png"
    done = run_python(["-m", "training.caption", str(image), "--artifacts", str(artifacts), "--json"])
    [record] = json.loads(done.stdout)
    assert record["image"] == str(image.resolve()) and record["caption"]
    assert len(record["attention"]) == len(record["words"]) and len(record["attention"][0]) == 16
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    done = run_python(["-m", "training.caption", str(image), str(broken), "--artifacts", str(artifacts)], check=False)
    assert done.returncode == 2 and "broken.png" in done.stderr
    assert done.stdout.startswith(str(image.resolve()) + "\t")


def test_evaluate_command_rescores_the_test_split(trained):
    artifacts, _ = trained
    done = run_python(["-m", "training.evaluate", "--artifacts", str(artifacts), "--split", "test", "--beam", "1"])
    assert "bleu1" in done.stdout and "cider" in done.stdout


def test_same_seed_gives_identical_losses(trained, demo_data, tmp_path):
    # oneDNN's CPU kernels may sum in a thread-dependent order (seen once in the last digits of
    # val_loss); with them off, as the README says to do for bit-exact runs, runs must match exactly.
    # The second run is the shared one's config in another folder (evaluating fewer images: no loss depends on it).
    artifacts, _ = trained
    path = write_config(tmp_path / "config.yaml", demo_data, tmp_path / "second", **TRAINED_RUN, eval_max_images=2)
    run_python(["-m", "training.train", "--config", str(path)], env={"TF_ENABLE_ONEDNN_OPTS": "0"})
    columns = ("epoch", "train_loss", "val_loss", "learning_rate")
    metrics = [
        [{k: row[k] for k in columns} for row in read_metrics(folder / "metrics.csv")]
        for folder in (artifacts, tmp_path / "second")
    ]
    assert metrics[0] == metrics[1] and len(metrics[0]) == 3
