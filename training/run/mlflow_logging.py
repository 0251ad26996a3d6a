"""Experiment tracking in MLflow (optional): copy a finished run's config, metrics, scores and files to a store.

Only used when `mlflow` (or `mlflow-skinny`) is installed and a tracking URI is given or set in MLFLOW_TRACKING_URI.
Note: MLflow 3 refuses `file:` stores unless MLFLOW_ALLOW_FILE_STORE=true is set.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

from training.run.artifacts import (
    FINAL_MODEL,
    IXTOWORD_FILE,
    METRICS_FILE,
    REPORT_FILE,
    SNAPSHOT_FILE,
    SUMMARY_FILE,
    WORDTOIX_FILE,
    predictions_name,
    read_metrics,
    read_snapshot,
    read_summary,
)

logger = logging.getLogger(__name__)

REPORT_FILES = (REPORT_FILE, "*.png", METRICS_FILE, SUMMARY_FILE, SNAPSHOT_FILE, predictions_name("*"))
# Not the feature store or checkpoint.keras: large, and rebuilt or superseded by the final model.
MODEL_FILES = (FINAL_MODEL, WORDTOIX_FILE, IXTOWORD_FILE)


def flatten_config(config: dict, prefix: str = "") -> dict[str, str]:
    """{"model": {"image_size": [64, 64]}} -> {"model.image_size": "[64, 64]"}: MLflow params are flat strings."""
    params = {}
    for key, value in config.items():
        if isinstance(value, dict):
            params.update(flatten_config(value, f"{prefix}{key}."))
        else:
            params[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return params


def _finite(value) -> bool:
    # An empty cell (None) is a metric that epoch did not log; text (the training stage) is no metric.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _epoch_metrics(path: Path) -> list[tuple[str, float, int]]:
    return [
        (key, float(value), row["epoch"])
        for row in read_metrics(path)
        for key, value in row.items()
        if key != "epoch" and _finite(value)
    ]


def _final_scores(summary: dict) -> dict[str, float]:
    """The run's test scores as run_summary.json holds them (a later `training.evaluate` writes beside them)."""
    scores = {**summary.get("bleu_scores", {}), **{f"test_{k}": v for k, v in summary.get("scores", {}).items()}}
    return {k: float(v) for k, v in scores.items() if _finite(v)}


def log_run_to_mlflow(
    artifacts_dir: str | Path, tracking_uri: str | None = None, experiment_name: str = "image-captioning"
) -> bool:
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
    summary = read_summary(artifacts) or {}
    config = read_snapshot(artifacts) or {}
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
        metrics = [Metric(k, v, now, step) for k, v, step in _epoch_metrics(artifacts / METRICS_FILE)]
        metrics += [Metric(k, v, now, 0) for k, v in _final_scores(summary).items()]
        for start in range(0, max(len(params), len(metrics)), 100):  # MLflow caps a batch at 100 params
            client.log_batch(run_id, metrics=metrics[start : start + 100], params=params[start : start + 100])
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
