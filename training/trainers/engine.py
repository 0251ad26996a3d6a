"""The epoch engine every training stage runs through: Keras `fit` with one set of callbacks.

A stage is a model whose `train_step` says what one step does (the caption model's own for
cross-entropy; `SelfCriticalStep` for SCST) and a `monitor` that scores its epochs. The engine
gives every stage the same epoch loop and callbacks (seeds, NaN stop, progress line, TensorBoard,
metrics.csv), the same best checkpoint and resume state with its rotation, and turns Ctrl-C,
SIGTERM and a NaN loss into the same errors and the same end of the resume state.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import keras

from training.callbacks.checkpoint import BestModelCheckpoint, EpochSeeds, ResumeState
from training.callbacks.metrics import MetricsCallback, ProgressCallback
from training.run.lifecycle import Terminated


class TrainingInterrupted(RuntimeError):
    """Ctrl-C (or SIGTERM) during training: the last completed epoch stays the resume point."""

    def __init__(self, message: str, terminated: bool = False):
        super().__init__(message)
        self.terminated = terminated


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def epoch_callbacks(
    seed: int,
    checkpoint: BestModelCheckpoint,
    resume: ResumeState,
    progress: ProgressCallback,
    *,
    decisions: list | None = None,
    caption_metrics=None,
    chief: bool = True,
    logs_dir=None,
    tracker=None,
    stage: str | None = None,
) -> list:
    """Every stage's callbacks, in the order they must run: dropout seeds, the NaN stop, Keras' bar (drawn
    on a terminal only; it ends its line before the callbacks after it log), the caption metrics (before
    what reads them), the checkpoint and the other `decisions` on the monitored value, then on the chief
    TensorBoard, the progress line and metrics.csv, and last the resume state (it records what the
    callbacks before it decided)."""
    callbacks = [EpochSeeds(seed), keras.callbacks.TerminateOnNaN(), keras.callbacks.ProgbarLogger()]
    if caption_metrics is not None:
        callbacks.append(caption_metrics)
    callbacks += [checkpoint, *(decisions or [])]
    if chief:
        callbacks += [keras.callbacks.TensorBoard(log_dir=str(logs_dir), update_freq="epoch"), progress]
        if tracker is not None:
            callbacks.append(MetricsCallback(tracker, stage=stage))
    return callbacks + [resume]


def fit_epochs(
    model,
    data,
    resume: ResumeState,
    interrupted: Callable[[str, int], str],
    nan_message: Callable[[int], str],
    *,
    initial_epoch: int,
    **fit_arguments,
) -> keras.callbacks.History:
    """model.fit from `initial_epoch`: Ctrl-C or SIGTERM stops at once and raises TrainingInterrupted with
    `interrupted(what, epochs saved)`; a NaN loss marks the resume state ended and raises NonFiniteLoss
    with `nan_message(epoch)`. The last completed epoch stays the resume point in both cases."""
    resume.last_saved_epoch = initial_epoch
    try:
        history = model.fit(data, initial_epoch=initial_epoch, shuffle=False, **fit_arguments)
    except KeyboardInterrupt as interrupt:
        terminated = isinstance(interrupt, Terminated)
        message = interrupted("SIGTERM" if terminated else "interrupted", resume.last_saved_epoch)
        raise TrainingInterrupted(message, terminated=terminated) from None
    losses = history.history.get("loss", []) + history.history.get("val_loss", [])
    if model.stop_training and any(not math.isfinite(v) for v in losses):
        resume.mark_ended("nan")
        raise NonFiniteLoss(nan_message(len(history.epoch) + initial_epoch))
    return history
