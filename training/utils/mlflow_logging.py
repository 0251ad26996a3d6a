"""Experiment tracking in MLflow (optional): copy a finished run's config, metrics, scores and files to a store.

Only used when `mlflow` (or `mlflow-skinny`) is installed and a tracking URI is given or set in MLFLOW_TRACKING_URI.
Note: MLflow 3 refuses `file:` stores unless MLFLOW_ALLOW_FILE_STORE=true is set.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from pathlib import Path

from training.utils.io import load_json

logger = logging.getLogger(__name__)

REPORT_FILES = ("report.html", "*.png", "metrics.csv", "run_summary.json", "config_snapshot.json",
                "predictions_*.json")
# Not features.npy or checkpoint.keras: large, and rebuilt or superseded by the final model.
MODEL_FILES = ("image_caption_model_final.keras", "wordtoix.json", "ixtoword.json")


def flatten_config(config: dict, prefix: str = "") -> dict[str, str]:
    """{"model": {"image_size": [64, 64]}} -> {"model.image_size": "[64, 64]"}: MLflow params are flat strings."""
    params = {}
    for key, value in config.items():
        if isinstance(value, dict):
            params.update(flatten_config(value, f"{prefix}{key}."))
        else:
            params[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return params


def _epoch_metrics(path: Path) -> list[tuple[str, float, int]]:
    if not path.is_file():
        return []
    found = []
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            epoch = int(row.pop("epoch"))
            for key, text in row.items():
                try:
                    value = float(text)
                except (TypeError, ValueError):
                    continue  # an empty cell: the metric was not logged that epoch
                if math.isfinite(value):
                    found.append((key, value, epoch))
    return found


def _final_scores(artifacts: Path, summary: dict) -> dict[str, float]:
    predictions = artifacts / "predictions_test.json"
    # predictions_test.json is rewritten by a later `training.evaluate`, so its scores win over the summary's.
    latest = load_json(predictions).get("scores", {}) if predictions.is_file() else {}
    others = {f"test_{k}": v for k, v in {**summary.get("scores", {}), **latest}.items()}
    scores = {**summary.get("bleu_scores", {}), **others}
    return {k: float(v) for k, v in scores.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def log_run_to_mlflow(artifacts_dir: str | Path, tracking_uri: str | None = None,
                      experiment_name: str = "image-captioning") -> bool:
    """Log the run in `artifacts_dir` as one MLflow run; False (and a debug log) when MLflow is not set up."""
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking_uri:
        logger.debug("MLflow logging skipped: no tracking URI given and MLFLOW_TRACKING_URI is not set")
        return False
    try:
        from mlflow.entities import Metric, Param, RunStatus
        from mlflow.tracking import MlflowClient
    except ImportError:
        logger.debug("MLflow logging skipped: the mlflow package is not installed (pip install mlflow-skinny)")
        return False

    artifacts = Path(artifacts_dir)
    summary = load_json(artifacts / "run_summary.json") if (artifacts / "run_summary.json").is_file() else {}
    snapshot = artifacts / "config_snapshot.json"
    config = load_json(snapshot) if snapshot.is_file() else summary.get("config", {})
    config = config.get("config", config)  # some snapshots wrap the config
    meta = summary.get("metadata", {})

    # An explicit client, not mlflow.set_tracking_uri: the caller's global MLflow state stays as it was.
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(experiment_name)
    commit = (meta.get("git_info") or {}).get("commit")
    tags = {"training.run_id": str(meta.get("run_id", "")), "git.commit": str(commit)}
    run_id = client.create_run(experiment_id, run_name=meta.get("run_name") or artifacts.name, tags=tags).info.run_id
    try:
        now = int(time.time() * 1000)
        params = [Param(k, v) for k, v in flatten_config(config).items()]
        metrics = [Metric(k, v, now, step) for k, v, step in _epoch_metrics(artifacts / "metrics.csv")]
        metrics += [Metric(k, v, now, 0) for k, v in _final_scores(artifacts, summary).items()]
        for start in range(0, max(len(params), len(metrics)), 100):  # MLflow caps a batch at 100 params
            client.log_batch(run_id, metrics=metrics[start:start + 100], params=params[start:start + 100])
        for pattern in REPORT_FILES:
            for path in sorted(artifacts.glob(pattern)):
                client.log_artifact(run_id, str(path), "report")
        for name in MODEL_FILES:
            if (artifacts / name).is_file():
                client.log_artifact(run_id, str(artifacts / name), "model")
    except BaseException:
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    client.set_terminated(run_id)
    logger.info("run %s logged to MLflow at %s (MLflow run %s)", meta.get("run_id"), tracking_uri, run_id)
    return True
