"""Experiment tracking: per-epoch metrics.csv, config snapshot and run_summary.json for one run."""

from __future__ import annotations

import logging
import math
import os
import platform
import secrets
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from training.run.artifacts import METRICS_FILE, SNAPSHOT_FILE, SUMMARY_FILE, read_metrics, write_metrics
from training.utils.io import ensure_dir, save_json

logger = logging.getLogger(__name__)


def _plain(value: Any) -> Any:
    # NumPy scalars/arrays carry .tolist(); csv and json want Python types.
    return value.tolist() if hasattr(value, "tolist") else value


def _to_jsonable(value: Any) -> Any:
    """Turn config/metric values (Config, tuples, Paths, NumPy values) into plain JSON types."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    value = _plain(value)
    if isinstance(value, dict):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf
    return value


def _run_git(*args: str, cwd: Path) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):  # no git binary, or it hung
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def git_info(path: str | Path | None = None) -> dict[str, Any]:
    """Commit, branch and dirty flag of the checkout holding `path` (the package by default); Nones outside git."""
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent
    commit = _run_git("rev-parse", "--verify", "-q", "HEAD", cwd=cwd)
    branch = _run_git("symbolic-ref", "--short", "-q", "HEAD", cwd=cwd)  # None on a detached HEAD
    status = _run_git("status", "--porcelain", "--untracked-files=no", cwd=cwd)
    return {"commit": commit, "branch": branch, "dirty": None if status is None else bool(status)}


def _package_version(*names: str) -> str | None:
    # importlib.metadata reads versions without importing TensorFlow (seconds of start-up).
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def environment_info() -> dict[str, Any]:
    gpus: list[str] | None = None
    if "tensorflow" in sys.modules:  # listing GPUs needs TensorFlow; only ask if the run already loaded it
        try:
            gpus = [gpu.name for gpu in sys.modules["tensorflow"].config.list_physical_devices("GPU")]
        except Exception as error:  # the summary must still be written
            logger.warning("could not list GPUs: %s", error)
    return {
        "python_version": platform.python_version(),
        "tensorflow_version": _package_version("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tf-nightly"),
        "keras_version": _package_version("keras"),
        "numpy_version": _package_version("numpy"),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "gpus": gpus,
    }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ExperimentTracker:
    """Records one training run in `output_dir`; every file is rewritten atomically as soon as it changes."""

    def __init__(self, output_dir: str | Path, run_name: str | None = None, seed: int | None = None):
        self.output_dir = ensure_dir(output_dir)
        self.run_id = datetime.now().strftime("%Y%m%d_%H%M%S_") + secrets.token_hex(4)
        self.run_name = run_name or self.run_id
        self.seed = seed
        self.started_at = _now()
        self._start = time.monotonic()
        self.config: dict[str, Any] = {}
        self.bleu_scores: dict[str, float] = {}
        self.scores: dict[str, float] = {}
        self.artifacts: dict[str, str] = {}
        self.bad_images: list[dict[str, Any]] = []
        self.sections: dict[str, Any] = {}  # further top-level blocks of run_summary.json (e.g. scst, scores_before_scst)
        self.metrics_path = self.output_dir / METRICS_FILE
        self.rows = read_metrics(self.metrics_path)  # a resumed run continues the existing file

    def log_config(self, config_dict: Any) -> None:
        """Store the run's config (a dict or a Config) and write config_snapshot.json."""
        self.config = _to_jsonable(config_dict)
        save_json(self.config, self.output_dir / SNAPSHOT_FILE)

    def log_metrics(self, epoch: int, **metrics: Any) -> None:
        """Append one epoch's row to metrics.csv now, dropping rows at or after `epoch` left by an earlier run."""
        epoch = int(epoch)
        row = {"epoch": epoch, **{k: _plain(v) for k, v in metrics.items()}}  # NaN stays "nan"
        self.rows = [r for r in self.rows if r["epoch"] < epoch] + [row]
        write_metrics(self.metrics_path, self.rows)

    def log_bleu_scores(
        self, bleu1: float | None = None, bleu2: float | None = None, bleu3: float | None = None, bleu4: float | None = None
    ) -> None:
        values = {"test_bleu1": bleu1, "test_bleu2": bleu2, "test_bleu3": bleu3, "test_bleu4": bleu4}
        self.bleu_scores.update({k: _to_jsonable(v) for k, v in values.items() if v is not None})

    def log_scores(self, **scores: float) -> None:
        """Other test-set scores, e.g. log_scores(meteor=0.2, rouge_l=0.45, cider=0.6)."""
        self.scores.update({k: _to_jsonable(v) for k, v in scores.items()})

    def log_artifact(self, name: str, path: str | Path) -> None:
        self.artifacts[name] = str(path)

    def log_bad_images(self, images: list[dict[str, Any] | str]) -> None:
        """Images that could not be read and were skipped: {"image", "path", "reason"} dicts, or image names."""
        for image in images:
            entry = image if isinstance(image, dict) else {"image": str(image)}
            self.bad_images.append(
                _to_jsonable({"image": entry.get("image"), "path": entry.get("path"), "reason": entry.get("reason")})
            )

    def summary(self) -> dict[str, Any]:
        final_metrics = _to_jsonable({k: v for k, v in self.rows[-1].items() if v is not None} if self.rows else {})
        return {
            "metadata": {
                "run_id": self.run_id,
                "run_name": self.run_name,
                "git_info": git_info(),
                "environment": environment_info(),
                "seed": self.seed,
                "started_at": self.started_at,
                "finished_at": _now(),
                "wall_time_seconds": round(time.monotonic() - self._start, 3),
            },
            "config": self.config,
            "final_metrics": final_metrics,
            "bleu_scores": self.bleu_scores,
            "scores": self.scores,
            "artifacts": self.artifacts,
            "bad_images": self.bad_images,
            **_to_jsonable(self.sections),
        }

    def finalize(self) -> dict[str, Any]:
        """Write run_summary.json and return its contents."""
        summary = self.summary()
        save_json(summary, self.output_dir / SUMMARY_FILE)
        logger.info("run %s summary written to %s", self.run_id, self.output_dir / SUMMARY_FILE)
        return summary
