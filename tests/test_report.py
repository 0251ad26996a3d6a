"""Tests for the run report, its Chromium screenshot and the optional MLflow logging, on a real artifacts_dir."""

import html
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.report import build_report, main
from training.run.experiment_tracking import ExperimentTracker
from training.run.mlflow_logging import log_run_to_mlflow
from training.utils.io import load_json, save_json

REPO = Path(__file__).resolve().parents[1]
SCORES = {
    "bleu1": 0.6123,
    "bleu2": 0.4234,
    "bleu3": 0.3345,
    "bleu4": 0.2456,
    "meteor": 0.2567,
    "rouge_l": 0.4678,
    "cider": 0.7789,
}
PREDICTIONS = ["a red circle & a <blue> square", "two green triangles", 'a "big" yellow star costs $5 or $6', "one small square"]


def _attention(words: int, peak: int) -> list[list[float]]:
    rows = np.full((words, 64), 0.1 / 63)
    rows[:, peak] = 0.9  # all the weight on one region, so the heatmap has a visible hot spot
    return rows.round(4).tolist()


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A finished run's artifacts_dir, written the way the pipeline writes it."""
    images, artifacts = tmp_path / "Images", tmp_path / "artifacts"
    images.mkdir()
    ids = ["red.png", "green.png", "yellow.png", "gone.png"]  # gone.png is never written
    for image_id, colour in zip(ids[:3], ["red", "green", "yellow"]):
        picture = Image.new("RGB", (64, 48), "white")
        picture.paste(Image.new("RGB", (24, 24), colour), (8, 8))
        picture.save(images / image_id)
    tracker = ExperimentTracker(artifacts, run_name="report-test", seed=7)
    tracker.log_config(
        {
            "data": {"images_path": str(images), "captions_file": "captions.txt", "artifacts_dir": str(artifacts)},
            "model": {"architecture": "transformer", "feature_extractor": "PatchGrid", "image_size": [64, 64]},
            "training": {"epochs": 3, "batch_size": 4, "learning_rate": 0.001},
        }
    )
    for epoch, (train, val, lr) in enumerate([(3.1, 3.0, 1e-3), (2.4, 2.6, 1e-3), (2.0, 2.5, 5e-4)], start=1):
        tracker.log_metrics(
            epoch,
            train_loss=train,
            val_loss=val,
            learning_rate=lr,
            epoch_time_seconds=1.5,
            train_masked_accuracy=0.2 * epoch,
            val_masked_accuracy=0.18 * epoch,
        )
    tracker.log_bleu_scores(**{f"bleu{n}": SCORES[f"bleu{n}"] for n in range(1, 5)})
    tracker.log_scores(meteor=SCORES["meteor"], rouge_l=SCORES["rouge_l"], cider=SCORES["cider"])
    tracker.log_artifact("model", str(artifacts / "image_caption_model_final.keras"))
    tracker.finalize()
    save_json({"image_ids": ids, "grid_shape": [8, 8], "feature_dim": 192}, artifacts / "features_index.json")
    captions = []
    for position, (image_id, prediction) in enumerate(zip(ids, PREDICTIONS)):
        record = {
            "image_id": image_id,
            "prediction": prediction,
            "score": -1.5,
            "references": [f"reference one for {image_id}", f"reference <two> for {image_id}"],
        }
        if position < 2:
            record["attention"] = _attention(len(prediction.split()), peak=9 + 27 * position)
        captions.append(record)
    save_json({"split": "test", "beam_size": 3, "scores": SCORES, "captions": captions}, artifacts / "predictions_test.json")
    return artifacts


def _check_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000, path
    with Image.open(path) as image:
        image.verify()


def test_report_writes_every_piece(run_dir: Path):
    report = build_report(run_dir)
    assert report == run_dir / "report.html"
    for name in ("loss_curve.png", "learning_rate.png", "gallery.png", "attention_red.png", "attention_green.png"):
        _check_png(run_dir / name)
    assert not (run_dir / "attention_yellow.png").exists()  # no attention recorded for it
    page = report.read_text(encoding="utf-8")
    assert "report-test" in page and load_json(run_dir / "run_summary.json")["metadata"]["run_id"] in page
    for value in SCORES.values():
        assert f"{value:.4f}" in page
    for label in ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"):
        assert label in page
    for prediction in PREDICTIONS:
        assert html.escape(prediction) in page
    assert "<blue>" not in page and "reference <two>" not in page
    assert page.count("data:image/png;base64,") >= 2 + 3 + 2  # curves, found images, attention strips
    assert "image not found" in page and "gone.png" in page
    for forbidden in ("http://", "https://", "<script"):
        assert forbidden not in page.lower()
    assert not list(run_dir.glob(".*.tmp*"))  # atomic writes leave no temporaries


def test_attention_heatmap_follows_the_grid(run_dir: Path):
    from training.evaluation.report import _heatmap

    heat = _heatmap(_attention(1, peak=9)[0], (8, 8), (64, 48))
    assert heat.shape == (48, 64)
    row, column = np.unravel_index(heat.argmax(), heat.shape)
    assert 6 <= row <= 12 and 8 <= column <= 16  # region (1, 1) of an 8x8 grid over a 64x48 image


def test_attention_for_a_missing_image_and_an_unknown_grid(run_dir: Path):
    predictions = load_json(run_dir / "predictions_test.json")
    predictions["captions"][3]["attention"] = _attention(3, peak=0)  # gone.png: heatmap over a placeholder
    predictions["captions"][2]["attention"] = [[0.2] * 5] * 5  # 5 regions: no grid, a note instead of a crash
    save_json(predictions, run_dir / "predictions_test.json")
    page = build_report(run_dir).read_text(encoding="utf-8")
    _check_png(run_dir / "attention_gone.png")
    assert not (run_dir / "attention_yellow.png").exists() and "5 regions do not form a known grid" in page


def test_cli_and_missing_predictions(run_dir: Path, capsys):
    (run_dir / "predictions_test.json").unlink()
    assert main(["--artifacts", str(run_dir)]) == 0
    assert "report written" in capsys.readouterr().out
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "No test predictions yet" in page
    assert f"{SCORES['cider']:.4f}" in page  # scores fall back to run_summary.json
    assert main(["--artifacts", str(run_dir / "nope")]) == 2


def test_cli_as_module(run_dir: Path):
    result = subprocess.run(
        [sys.executable, "-m", "training.report", "--artifacts", str(run_dir), "--images", str(run_dir.parent / "Images")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (run_dir / "report.html").is_file()


def test_render_in_chromium(run_dir: Path, tmp_path: Path):
    if not (shutil.which("chromium") or Path("/usr/bin/chromium").exists()):
        pytest.skip("chromium not installed (apt-get install chromium): screenshot check skipped")
    report, shot = build_report(run_dir), tmp_path / "report.png"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "render_report.py"), str(report), str(shot)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert shot.stat().st_size > 20_000
    with Image.open(shot) as image:
        colours = image.convert("RGB").resize((64, 256)).getcolors(maxcolors=1_000_000)
    assert len(colours) > 50  # a real page, not a blank or single-colour screen


def test_mlflow_without_tracking_uri(run_dir: Path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert log_run_to_mlflow(run_dir) is False


def test_mlflow_file_store(run_dir: Path, tmp_path: Path, monkeypatch):
    pytest.importorskip("mlflow", reason="mlflow not installed (pip install mlflow-skinny): MLflow logging not tested")
    from mlflow.tracking import MlflowClient

    # MLflow 3 refuses file stores unless asked; a sqlite store would need the full mlflow package.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    build_report(run_dir)
    save_json({"<pad>": 0, "a": 1}, run_dir / "wordtoix.json")
    uri = (tmp_path / "mlruns").as_uri()
    assert log_run_to_mlflow(run_dir, tracking_uri=uri) is True
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("image-captioning").experiment_id])
    assert run.data.params["model.architecture"] == "transformer"
    assert run.data.tags["training.run_id"] == load_json(run_dir / "run_summary.json")["metadata"]["run_id"]
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(1, 3.0), (2, 2.6), (3, 2.5)]
    assert run.data.metrics["test_cider"] == pytest.approx(SCORES["cider"])
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/report.html", "report/gallery.png", "report/metrics.csv"} <= logged
    assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/wordtoix.json"]


def test_two_stages_get_their_own_loss_panels_and_a_score_that_does_not_apply_shows_n_a(run_dir: Path):
    from training.evaluation.report import _read_metrics, loss_panels

    build_report(run_dir)
    with Image.open(run_dir / "loss_curve.png") as image:
        one_stage = image.width
    tracker = ExperimentTracker(run_dir, run_name="report-test", seed=7)  # continues metrics.csv: SCST's epochs
    for epoch, (reward, policy_loss) in enumerate([(0.8, -0.6), (0.9, -0.4)], start=4):
        tracker.log_metrics(
            epoch,
            train_loss=policy_loss,
            reward=reward,
            val_cider=0.5 + epoch / 10,
            learning_rate=1e-5,
            epoch_time_seconds=2.0,
            stage="scst",
        )
    summary = load_json(run_dir / "run_summary.json")
    summary.update(scst={"final_model": "scst"}, scores_before_scst={**SCORES, "count_accuracy": None})
    save_json(summary, run_dir / "run_summary.json")
    predictions = load_json(run_dir / "predictions_test.json")
    predictions["scores"]["count_accuracy"] = None  # no caption stated a number: nothing to count
    save_json(predictions, run_dir / "predictions_test.json")

    page = build_report(run_dir).read_text(encoding="utf-8")
    assert "<td>count accuracy</td><td>n/a</td><td>n/a</td>" in page and "None" not in page
    [(xe_title, xe_epochs, xe, _), (scst_title, scst_epochs, scst, _)] = loss_panels(_read_metrics(run_dir / "metrics.csv"))
    assert (xe_title, xe_epochs, xe) == ("cross-entropy", [1, 2, 3], {"train_loss": [3.1, 2.4, 2.0], "val_loss": [3.0, 2.6, 2.5]})
    assert (scst_title, scst_epochs) == ("SCST", [4, 5])  # the negative policy loss is drawn here only
    assert scst == {"mean reward (CIDEr-D)": [0.8, 0.9], "policy loss": [-0.6, -0.4]}
    with Image.open(run_dir / "loss_curve.png") as image:
        assert image.width > 1.8 * one_stage  # two panels side by side
