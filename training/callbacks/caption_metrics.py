"""Caption metrics while training: greedy captions of validation images -> val_bleu4 and val_cider, no Java.

BLEU-4 is NLTK's corpus BLEU on the cleaned tokens (as `bleu4` of the test scores); CIDEr-D takes its
document frequencies from the validation references being scored, as the reported `cider` does.
"""

from __future__ import annotations

import hashlib
import logging
import time
import warnings

import keras
import numpy as np

from training.evaluation.cider import CiderD
from training.evaluation.metrics import strip_wrappers

log = logging.getLogger(__name__)


class CaptionValidation:
    """The validation images and references to caption, and how to score them."""

    def __init__(self, tokenizer, builder, captions: dict[str, list[str]], max_images: int, batch_size: int = 128):
        self.image_ids = list(captions)[:max_images]
        self.tokenizer, self.batch_size = tokenizer, batch_size
        self.references = [[strip_wrappers(c) for c in captions[i]] for i in self.image_ids]
        self.features = builder.image_features(self.image_ids) if self.image_ids else None
        self._decoders: dict[int, object] = {}
        self._scores: dict[str, dict[str, float]] = {}  # weights digest -> scores

    def __len__(self) -> int:
        return len(self.image_ids)

    def score(self, model) -> dict[str, float]:
        """val_bleu4 and val_cider of `model`'s greedy captions.

        A model with the weights of one scored before (the best checkpoint, loaded again for the next
        stage) gets that one's scores: decoding again would trace another search for the same captions."""
        from training.evaluation import BLEUScore, GreedyDecoder

        digest = weights_digest(model)
        if digest in self._scores:
            return dict(self._scores[digest])
        decoder = self._decoders.get(id(model))
        if decoder is None:  # one decoder per model: its compiled search is traced once and reused every epoch
            decoder = self._decoders[id(model)] = GreedyDecoder(model, self.tokenizer, batch_size=self.batch_size)
        texts = [c.text for c in decoder.decode(self.features)]
        with warnings.catch_warnings():  # NLTK warns at every epoch whose captions share no 4-gram with the references
            warnings.simplefilter("ignore", UserWarning)
            bleu = BLEUScore(smoothing=None).corpus_score(self.references, texts)["bleu4"]
        cider, _ = CiderD.corpus_score(texts, self.references)
        self._scores[digest] = {"val_bleu4": float(bleu), "val_cider": float(cider)}
        return dict(self._scores[digest])


def weights_digest(model) -> str:
    """A hash of the model's weights: milliseconds, next to the seconds of a decode."""
    digest = hashlib.blake2b(digest_size=16)
    for weight in model.weights:
        digest.update(np.ascontiguousarray(np.asarray(weight)).tobytes())
    return digest.hexdigest()


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
    """Every `every` epochs adds val_bleu4 and val_cider to the epoch's logs (for the checkpoint, early
    stopping, learning-rate decay, metrics.csv, TensorBoard and the progress line: put it before them)."""

    def __init__(self, validation: CaptionValidation, every: int = 1, strategy=None):
        super().__init__()
        self.validation, self.every, self.strategy = validation, int(every), strategy
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
