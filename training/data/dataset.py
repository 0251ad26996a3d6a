"""tf.data pipelines: captions + feature store -> ((image_features, input_tokens), target_tokens) batches."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tensorflow as tf


@dataclass(frozen=True)
class TrainingSample:
    """One caption of one image, as token ids (startseq ... endseq)."""

    image_id: str
    tokens: tuple[int, ...]


def pool_features(features: np.ndarray, chunk_size: int = 1024) -> np.ndarray:
    """Mean over regions, (N, R, C) -> (N, 1, C) float16, read chunk by chunk so a memory-mapped store stays on disk."""
    pooled = np.empty((features.shape[0], 1, features.shape[2]), dtype=np.float16)
    for start in range(0, features.shape[0], chunk_size):
        chunk = np.asarray(features[start : start + chunk_size], dtype=np.float32)
        pooled[start : start + chunk_size, 0] = chunk.mean(axis=1)
    return pooled


class DatasetBuilder:
    """Turns {image_id: [caption, ...]} into batches for teacher-forced training on whole captions.

    Each element is one caption. Inputs are tokens[:-1], targets tokens[1:], so one forward pass
    trains every position of the caption; batches are padded (id 0) only to their own longest
    caption, and the loss ignores padding. Image features are gathered per batch from the
    (memory-mapped) store, so the store is never loaded whole into memory.
    """

    def __init__(self, features, image_index, tokenizer, max_length, batch_size=64, seed=42, pooled=False):
        self.features = pool_features(features) if pooled else features
        self.image_index = image_index
        self.tokenizer = tokenizer
        self.max_length = int(max_length)  # in tokens, startseq and endseq included
        self.batch_size = int(batch_size)
        self.seed = seed

    @property
    def feature_shape(self) -> tuple[int, int]:
        return tuple(self.features.shape[1:])

    def samples(self, captions: dict[str, list[str]]) -> list[TrainingSample]:
        """Token ids per caption; captions over max_length are cut and still end with endseq."""
        samples = []
        for image_id, texts in captions.items():
            if image_id not in self.image_index:
                raise KeyError(f"image '{image_id}' has captions but no features in the feature store")
            for sequence in self.tokenizer.texts_to_sequences(texts):
                if len(sequence) > self.max_length:
                    sequence = sequence[: self.max_length - 1] + [self.tokenizer.end_id]
                samples.append(TrainingSample(image_id, tuple(sequence)))
        return samples

    def steps(self, captions: dict[str, list[str]]) -> int:
        return math.ceil(sum(len(texts) for texts in captions.values()) / self.batch_size)

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        # Reading the memmap in row order keeps disk access sequential; then restore batch order.
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows),) + self.feature_shape, dtype=np.float16)
        out[order] = self.features[rows[order]]
        return out

    def _to_model_inputs(self, rows, tokens):
        tokens = tokens.to_tensor(default_value=0)
        features = tf.numpy_function(self._gather, [rows], tf.float16, stateful=False)
        features = tf.cast(tf.ensure_shape(features, (None,) + self.feature_shape), tf.float32)
        return (features, tokens[:, :-1]), tokens[:, 1:]

    def build(self, captions: dict[str, list[str]], training: bool = True) -> tf.data.Dataset:
        samples = self.samples(captions)
        if not samples:
            raise ValueError("no captions to build a dataset from")
        rows = np.array([self.image_index[s.image_id] for s in samples], dtype=np.int64)
        lengths = np.array([len(s.tokens) for s in samples], dtype=np.int64)
        flat = np.fromiter((t for s in samples for t in s.tokens), dtype=np.int32, count=int(lengths.sum()))
        tokens = tf.RaggedTensor.from_row_lengths(flat, lengths)
        dataset = tf.data.Dataset.from_tensor_slices((rows, tokens))
        if training:
            # A full-size buffer gives a true shuffle; the seed makes the epoch order repeatable.
            dataset = dataset.shuffle(len(samples), seed=self.seed, reshuffle_each_iteration=True)
        dataset = dataset.batch(self.batch_size)
        dataset = dataset.map(self._to_model_inputs, num_parallel_calls=tf.data.AUTOTUNE)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)

    def image_batches(self, image_ids: list[str]) -> np.ndarray:
        """Features of the given images, in order, for decoding."""
        return self._gather(np.array([self.image_index[i] for i in image_ids], dtype=np.int64)).astype(np.float32)
