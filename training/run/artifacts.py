"""The run folder: the name of every file a run writes there, and the readers and writers of its tables.

Every other module takes these names from here. The feature store's own files (features.npy,
features_index.json, ...) are named by `training.features.store`, as a store may live outside
the run folder. No TensorFlow here: reading a run's results must not start it.

What evaluating writes never replaces what the run wrote: the run's test captions are
`predictions_test.json` (`predictions_test_xe.json`: the cross-entropy model's when SCST's is
final); a later `training.evaluate` writes `predictions_<split>_beam<k>.json` beside them, and
`logs/bleu_scores.csv` keeps one block of per-image rows per (split, beam).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from training.utils.io import atomic_write_text, load_json, save_json

# -- models and training state ---------------------------------------------------------------------
FINAL_MODEL = "image_caption_model_final.keras"  # the model a run ships (best checkpoint, or SCST's)
CHECKPOINT = "checkpoint.keras"  # best cross-entropy model by `monitor`, updated during training
XE_MODEL = "image_caption_model_xe.keras"  # the cross-entropy model SCST started from
SCST_CHECKPOINT = "checkpoint_scst.keras"  # SCST's best-val_cider model
RESUME_DIR = "resume"  # one epoch_NNNNN/ folder per completed epoch
SCST_RESUME_DIR = "resume_scst"
STATE_FILE = "state.json"  # inside an epoch folder: epoch, counters, identity
STATE_MODEL_FILE = "model.keras"  # inside an epoch folder: model + optimizer

# -- the record of the run -----------------------------------------------------------------------
SNAPSHOT_FILE = "config_snapshot.json"
SUMMARY_FILE = "run_summary.json"
METRICS_FILE = "metrics.csv"
SPLITS_FILE = "splits.json"
WORDTOIX_FILE = "wordtoix.json"
IXTOWORD_FILE = "ixtoword.json"
LOGS_DIR = "logs"  # TensorBoard, and the per-image scores
PER_IMAGE_SCORES = f"{LOGS_DIR}/bleu_scores.csv"
REPORT_FILE = "report.html"
LOSS_CURVE, LR_CURVE, CAPTION_METRICS_CURVE = "loss_curve.png", "learning_rate.png", "caption_metrics.png"
GALLERY_IMAGE = "gallery.png"
# The feature store names its own files (training.features.store); the report reads the index without
# importing the store (which starts TensorFlow), so its name is here too, and a test keeps the two equal.
FEATURES_INDEX = "features_index.json"
PREVIOUS_RUNS = "previous_runs"  # runs set aside by --fresh

# Files that show a folder holds a (partly) trained run.
TRAINED_RUN_FILES = (RESUME_DIR, CHECKPOINT, FINAL_MODEL, METRICS_FILE, SUMMARY_FILE)
# The seed's metrics.csv columns come first and in this order; any other metric follows.
METRIC_COLUMNS = ("epoch", "train_loss", "val_loss", "learning_rate", "epoch_time_seconds")


def predictions_name(split: str, beam_size: int | None = None) -> str:
    """predictions_<split>.json for the run's own captions, predictions_<split>_beam<k>.json for a later evaluation."""
    return f"predictions_{split}.json" if beam_size is None else f"predictions_{split}_beam{int(beam_size)}.json"


def attention_strip_name(image_id: str) -> str:
    return f"attention_{Path(image_id).stem}.png"


# -- predictions --------------------------------------------------------------------------------------
def write_predictions(
    artifacts_dir: str | Path, name: str, split: str, beam_size: int, scores: dict, captions: list[dict]
) -> Path:
    """One predictions file: what was scored (split, beam), its scores, and each image's caption."""
    path = Path(artifacts_dir) / name
    save_json({"split": split, "beam_size": int(beam_size), "scores": scores, "captions": captions}, path)
    return path


def read_predictions(artifacts_dir: str | Path, name: str = predictions_name("test")) -> dict | None:
    return _read_json(Path(artifacts_dir) / name)


# -- per-image scores ----------------------------------------------------------------------------------
def write_per_image_scores(artifacts_dir: str | Path, split: str, beam_size: int, rows: list[dict]) -> Path:
    """Replace the rows of (split, beam_size) in logs/bleu_scores.csv, keeping those of other evaluations."""
    path = Path(artifacts_dir) / PER_IMAGE_SCORES
    kept = [r for r in _read_csv(path) if (r.get("split"), r.get("beam")) != (split, str(int(beam_size)))]
    new = [{"split": split, "beam": str(int(beam_size)), **row} for row in rows]
    columns = list(dict.fromkeys(k for row in kept + new for k in row))
    _write_csv(path, columns, kept + new)
    return path


# -- metrics.csv -----------------------------------------------------------------------------------------
def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """metrics.csv rows with numbers parsed (an empty cell, a metric that epoch did not log, is None)."""
    rows = [{k: _parse_cell(v) for k, v in row.items() if v is not None} for row in _read_csv(Path(path))]
    return [row for row in rows if isinstance(row.get("epoch"), int)]


def write_metrics(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    extra = list(dict.fromkeys(k for r in rows for k in r if k not in METRIC_COLUMNS))
    return _write_csv(Path(path), [*METRIC_COLUMNS, *extra], rows)


def _parse_cell(text: str) -> Any:
    if text == "":
        return None
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return text


# -- summary and snapshot ------------------------------------------------------------------------------
def read_summary(artifacts_dir: str | Path) -> dict | None:
    return _read_json(Path(artifacts_dir) / SUMMARY_FILE)


def read_features_index(artifacts_dir: str | Path) -> dict | None:
    """The run folder's feature store index (grid shape, image ids), read without opening the store."""
    return _read_json(Path(artifacts_dir) / FEATURES_INDEX)


def read_snapshot(artifacts_dir: str | Path) -> dict | None:
    """The run's config as sections (data, model, training): config_snapshot.json, else run_summary.json's copy."""
    config = _read_json(Path(artifacts_dir) / SNAPSHOT_FILE)
    if config is None:
        config = (read_summary(artifacts_dir) or {}).get("config")
    if not config:
        return None
    return config.get("config", config)  # snapshots of early versions wrapped the config


def _read_json(path: Path) -> dict | None:
    return load_json(path) if path.is_file() else None


# -- csv ----------------------------------------------------------------------------------------------------
def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())
