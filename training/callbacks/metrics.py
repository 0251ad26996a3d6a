"""Epoch metrics to metrics.csv, and a one-line-per-epoch progress summary."""

from __future__ import annotations

import logging
import time

import keras

log = logging.getLogger(__name__)


def current_learning_rate(model) -> float:
    # .numpy(): a Keras variable, a tf.distribute MirroredVariable and a schedule's tensor all have it, and float() takes
    # no MirroredVariable; keras.ops.convert_to_numpy would make NumPy 2 warn on a Keras variable.
    rate = model.optimizer.learning_rate
    return float(rate.numpy() if hasattr(rate, "numpy") else rate)


class MetricsCallback(keras.callbacks.Callback):
    """Writes epoch,train_loss,val_loss,learning_rate,epoch_time_seconds (+ other logs) through the tracker.

    Other logs are written as train_<name>, val_ ones and those in AS_IS (SCST's reward) as they are."""

    AS_IS = ("reward",)

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
        row.update({(k if k.startswith("val_") or k in self.AS_IS else "train_" + k): v for k, v in logs.items()})
        stage = {"stage": self.stage} if self.stage else {}
        self.tracker.log_metrics(epoch=epoch + 1, **{k: float(v) for k, v in row.items() if v is not None}, **stage)


class ProgressCallback(keras.callbacks.Callback):
    """Logs one line per epoch: losses, validation scores, learning rate, time, estimated time left, and
    whether the checkpoint was saved. In a log file it is the whole progress (no bar is drawn there), so
    the callbacks that report an epoch tell it here instead of on lines of their own: put it after them."""

    SHOWN = (
        "reward",
        "loss",
        "masked_accuracy",
        "val_loss",
        "val_masked_accuracy",
        "val_bleu4",
        "val_cider",
        "val_object_precision",
        "val_object_recall",
        "val_distinct_share",
    )

    def __init__(self, epochs: int, checkpoint=None, caption_metrics=None, stage: str = "", earlier_epochs: int = 0):
        super().__init__()
        self.epochs = epochs  # this stage's
        self.stage = stage  # a later stage's name ("SCST"): its epochs are numbered from 1 and the run's epoch is shown
        self.earlier_epochs = earlier_epochs  # the run's epochs before this stage
        self.checkpoint = checkpoint  # BestModelCheckpoint: "saved <file>" on the epochs it saves
        self.caption_metrics = caption_metrics  # CaptionMetricsCallback: the time its captions took
        self._started = 0.0
        self._epoch_times: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self._epoch_times.append(time.perf_counter() - self._started)
        mean = sum(self._epoch_times) / len(self._epoch_times)
        own = epoch - self.earlier_epochs
        left = mean * (self.epochs - own - 1)
        title = (
            f"{self.stage} epoch {own + 1}/{self.epochs} (run epoch {epoch + 1})"
            if self.stage
            else f"epoch {own + 1}/{self.epochs}"
        )
        parts = [title] + [f"{k} {logs[k]:.4f}" for k in self.SHOWN if k in logs]
        # ReduceLROnPlateau puts the rate the epoch used in the logs, then may lower it for the next one.
        now = current_learning_rate(self.model)
        used = logs.get("learning_rate", now)
        parts.append(f"lr {used:.2e}" + (f" -> {now:.2e}" if now != used else ""))
        captions = getattr(self.caption_metrics, "seconds", {}).get(epoch)
        parts.append(f"{self._epoch_times[-1]:.1f}s" + (f" (val captions {captions:.1f}s)" if captions is not None else ""))
        parts.append(f"~{left:.0f}s left")
        if self.checkpoint is not None and self.checkpoint.saved_epoch == epoch:
            parts.append(f"saved {self.checkpoint.filepath.name}")
        log.info(" | ".join(parts))
