"""Epoch metrics to metrics.csv, and a one-line-per-epoch progress summary."""

from __future__ import annotations

import logging
import time

import keras

log = logging.getLogger(__name__)


def current_learning_rate(model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


class MetricsCallback(keras.callbacks.Callback):
    """Writes epoch,train_loss,val_loss,learning_rate,epoch_time_seconds (+ other logs) through the tracker."""

    def __init__(self, tracker, stage: str | None = None):
        super().__init__()
        self.tracker = tracker
        self.stage = stage  # the training stage, written to a `stage` column (xe, scst)
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        # The learning rate in use during this epoch: ReduceLROnPlateau may already have lowered it.
        learning_rate = logs.pop("learning_rate", None)
        row = {
            "train_loss": logs.pop("loss", None),
            "val_loss": logs.pop("val_loss", None),
            "learning_rate": learning_rate if learning_rate is not None else current_learning_rate(self.model),
            "epoch_time_seconds": round(time.perf_counter() - self._started, 3),
        }
        row.update({("train_" + k if not k.startswith("val_") else k): v for k, v in logs.items()})
        stage = {"stage": self.stage} if self.stage else {}
        self.tracker.log_metrics(epoch=epoch + 1, **{k: float(v) for k, v in row.items() if v is not None}, **stage)


class ProgressCallback(keras.callbacks.Callback):
    """Logs one line per epoch (losses, learning rate, time, estimated time left): readable in log files."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs
        self._started = 0.0
        self._epoch_times: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self._epoch_times.append(time.perf_counter() - self._started)
        mean = sum(self._epoch_times) / len(self._epoch_times)
        left = mean * (self.epochs - epoch - 1)
        parts = [f"epoch {epoch + 1}/{self.epochs}"]
        parts += [f"{k} {v:.4f}" for k, v in logs.items() if k in ("loss", "val_loss", "masked_accuracy", "val_masked_accuracy", "val_bleu4", "val_cider")]
        parts += [f"lr {current_learning_rate(self.model):.2e}", f"{self._epoch_times[-1]:.1f}s", f"~{left:.0f}s left"]
        log.info(" | ".join(parts))
