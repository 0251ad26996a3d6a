"""Caption metrics while training: greedy captions of validation images -> val_bleu4 and val_cider, no Java;
val_distinct_share and val_vocab_used; with a grounding, val_object_precision and val_object_recall.

The captions and scores come from the evaluator (`training.evaluation.evaluator`); this adds them to
an epoch's logs, agreed across the workers of a multi-worker run, and warns when the captions collapse
(`training.evaluation.diversity`).
"""

from __future__ import annotations

import logging
import time

import keras
import numpy as np

from training.evaluation.diversity import CollapseWatch, epoch_name
from training.evaluation.evaluator import Evaluator, split_images

log = logging.getLogger(__name__)


class CaptionValidation(Evaluator):
    """A run's validation images, the first `max_images` of `captions` ({image_id: [caption, ...]}), whose
    greedy captions `score` rates each time a stage asks (with `grounding`, also against what each image shows);
    `collapse_threshold` is the distinct share under which an epoch's captions are said to collapse."""

    def __init__(
        self,
        tokenizer,
        builder,
        captions: dict[str, list[str]],
        max_images: int,
        batch_size: int = 128,
        grounding=None,
        collapse_threshold: float = 0.0,
    ):
        super().__init__(tokenizer, *split_images(builder, captions, max_images), batch_size=batch_size, grounding=grounding)
        self.collapse_threshold = collapse_threshold


def agree_across_workers(values: dict[str, float], strategy) -> dict[str, float]:
    """Under multi-worker training, the mean of each worker's values, so every worker monitors the same number.

    Workers hold the same weights and caption the same images, so the values should already agree;
    the all-reduce makes sure, since a worker that stopped an epoch earlier than the others would hang them.
    """
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return values
    names = sorted(values)
    local = tf.constant([values[n] for n in names], tf.float64)
    reduced = strategy.reduce("MEAN", strategy.run(lambda: tf.identity(local)), axis=None).numpy()
    return {n: float(v) for n, v in zip(names, np.atleast_1d(reduced))}


class CaptionMetricsCallback(keras.callbacks.Callback):
    """Every `every` epochs adds the validation's scores (val_bleu4, val_cider, ...) to the epoch's logs (for the
    checkpoint, early stopping, learning-rate decay, metrics.csv, TensorBoard and the progress line: put it
    before them), and warns when the distinct share falls under the validation's collapse_threshold or below
    DROP_RATIO x the best earlier epoch's (at first `reference_share`, e.g. the cross-entropy model's)."""

    def __init__(
        self,
        validation: CaptionValidation,
        every: int = 1,
        strategy=None,
        reference_share: float | None = None,
        stage: str = "xe",
    ):
        super().__init__()
        self.validation, self.every, self.strategy = validation, int(every), strategy
        self.collapse = CollapseWatch(getattr(validation, "collapse_threshold", 0.0), reference_share)
        self.stage = stage  # as metrics.csv names it, in the warnings
        self._epoch_started = 0.0
        self.seconds: dict[int, float] = {}  # epoch (from 0) -> the time its captions took, for the progress line

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or (epoch + 1) % self.every or not len(self.validation):
            return
        started = time.perf_counter()
        values = agree_across_workers(self.validation.score(self.model), self.strategy)
        logs.update(values)
        cost = self.seconds[epoch] = time.perf_counter() - started
        warning = self.collapse.check(values.get("val_distinct_share"), epoch_name(epoch + 1, self.stage))
        if warning:
            log.warning("%s (validation captions)", warning)
        epoch_time = started - self._epoch_started
        log.debug(
            "val captions: %d images, BLEU-4 %.4f, CIDEr-D %.4f in %.1f s (%.0f%% of the epoch's %.1f s)",
            len(self.validation),
            values["val_bleu4"],
            values["val_cider"],
            cost,
            100 * cost / max(epoch_time, 1e-9),
            epoch_time,
        )
