"""tf.data pipelines: captions + feature store -> ((image_features, input_tokens, positions), target_tokens) batches."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import tensorflow as tf


@dataclass(frozen=True)
class TrainingSample:
    """One caption of one image, as token ids (startseq ... endseq)."""

    image_id: str
    tokens: tuple[int, ...]


def pool_regions(grid) -> tf.Tensor:
    """Mean over regions, summed in float32: (..., regions, channels) -> (..., 1, channels) float32 tensor.

    The one pooling op of a `use_regions: false` run: training batches, evaluation, the Captioner
    and its exported graph all call it, so they all see the very same pooled vector.
    """
    return tf.reduce_mean(tf.cast(grid, tf.float32), axis=-2, keepdims=True)


def pool_features(features: np.ndarray, chunk_size: int = 128) -> np.ndarray:
    """`pool_regions` of a whole store, (N, R, C) -> (N, 1, C) float32, chunk by chunk so a memory-mapped store
    stays on disk. Kept in float32, as the Captioner pools an image's grid, so a pooled run is trained and
    evaluated on the very vectors `training.caption` and the exported model compute."""
    pooled = np.empty((features.shape[0], 1, features.shape[2]), dtype=np.float32)
    for start in range(0, features.shape[0], chunk_size):
        pooled[start : start + chunk_size] = pool_regions(features[start : start + chunk_size]).numpy()
    return pooled


def augment_pixels(pixels, seed, augment) -> tf.Tensor:
    """Pixels (rows, regions, channels) in [-1, 1], one image per row -> each image a little brighter or darker
    (`brightness`), more or less contrasted (`contrast`), with noise (`noise`). Nothing changes hue (captions name
    colours) or moves a pixel (captions say left and right). Drawn from `seed` (int64 (2,)) alone, so a resumed
    run augments its batches as a run straight through does."""
    rows = tf.shape(pixels)[0]
    brightness, contrast, noise = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    if "brightness" in augment:
        pixels += tf.random.stateless_uniform([rows, 1, 1], brightness, -0.2, 0.2)
    if "contrast" in augment:
        mean = tf.reduce_mean(pixels, axis=[1, 2], keepdims=True)
        pixels = mean + (pixels - mean) * tf.random.stateless_uniform([rows, 1, 1], contrast, 0.8, 1.2)
    if "noise" in augment:
        pixels += tf.random.stateless_normal(tf.shape(pixels), noise, stddev=0.03)
    return tf.clip_by_value(pixels, -1.0, 1.0)


class DatasetBuilder:
    """Turns {image_id: [caption, ...]} into batches for teacher-forced training on whole captions.

    Each row of a batch is one image with its captions packed end to end: the inputs are every
    caption's tokens[:-1], the targets its tokens[1:], and `positions` counts each caption's
    tokens from 0. The model keeps the packed captions apart (its attention mask, or the LSTM
    state reset at position 0), so a row trains exactly as its captions would one per row, but
    the image's regions are read and projected once for all of its captions, and rows pad far
    less than single captions do. Why it pays on W1 (Flickr8k, 100x1536 regions, 2 CPU cores):
    bench/train.py and the README's Performance section.

    - A row holds at most `captions_per_row` captions: the split's most common number of
      captions per image (5 for Flickr8k), so an image with more gets several rows.
    - A batch holds round(batch_size / captions_per_row) rows, so about `batch_size` captions
      (65 for Flickr8k's 5 captions and batch_size 64). Every caption is in exactly one row and
      every row in exactly one batch, so an epoch still sees each caption once.
    - Training batches are drawn from a shuffle of the rows (images) and grouped by length in
      buckets `bucket_width` tokens wide, so a batch pads to little more than its own longest
      row; padding (id 0) is masked out of the loss. bucket_width=None turns bucketing off.
    - With `first_epoch`, epoch e's shuffle is drawn from (seed, e) alone, so a run resumed in a
      new process at epoch e sees the very batches an uninterrupted run would.
    - Image features are gathered per batch from the (memory-mapped) store, so the store is
      never loaded whole into memory.
    - With `augment` (the store holds pixels: PatchGrid, ConvEncoder) training batches are augmented
      (`augment_pixels`), each from (seed, epoch, batch); validation and evaluation never are.

    `max_length` means what it means for the model (`CaptionModel.max_length`) and the decoders:
    the most target tokens of one caption, i.e. its words and endseq (startseq is an input only),
    which is also the most steps a decoder takes. A caption with more words is cut to its first
    max_length - 1 words, followed by endseq.
    """

    def __init__(
        self,
        features,
        image_index,
        tokenizer,
        max_length,
        batch_size=64,
        seed=42,
        pooled=False,
        bucket_width: int | None = 4,
        augment=(),
    ):
        self.features = pool_features(features) if pooled else features
        self.image_index = image_index
        self.tokenizer = tokenizer
        self.max_length = int(max_length)  # targets per caption: the model's max_length
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1 (target tokens per caption, endseq included), got {max_length!r}")
        self.batch_size = int(batch_size)
        self.seed = seed
        self.bucket_width = bucket_width
        self.augment = tuple(augment)

    @property
    def feature_shape(self) -> tuple[int, int]:
        return tuple(self.features.shape[1:])

    def samples(self, captions: dict[str, list[str]]) -> list[TrainingSample]:
        """Token ids per caption (startseq ... endseq); one with more than max_length targets is cut and still ends with endseq."""
        samples = []
        for image_id, texts in captions.items():
            if image_id not in self.image_index:
                raise KeyError(f"image '{image_id}' has captions but no features in the feature store")
            for sequence in self.tokenizer.texts_to_sequences(texts):
                if len(sequence) - 1 > self.max_length:
                    sequence = sequence[: self.max_length] + [self.tokenizer.end_id]
                samples.append(TrainingSample(image_id, tuple(sequence)))
        return samples

    def steps(self, captions: dict[str, list[str]]) -> int:
        """Batches per epoch."""
        lengths = self.rows(captions)[1]
        return self._batch_count(lengths, self.rows_per_batch(captions))

    def _bucket_boundaries(self, lengths: np.ndarray) -> list[int]:
        """Bucket i holds rows of lengths[boundaries[i - 1]:boundaries[i]] ([] when not bucketing)."""
        if not self.bucket_width:
            return []
        width = int(self.bucket_width)
        return list(range(width + 1, int(lengths.max(initial=0)) + 1, width))

    def _batch_count(self, lengths: np.ndarray, rows_per_batch: int) -> int:
        # Each bucket ends with one part-filled batch, whatever the order, so the count is known.
        per_bucket = np.bincount(np.searchsorted(self._bucket_boundaries(lengths), lengths, side="right"))
        return int(np.sum(-(-per_bucket // rows_per_batch)))

    def captions_per_row(self, captions: dict[str, list[str]]) -> int:
        counts = Counter(len(texts) for texts in captions.values() if texts)
        return max(1, min(counts.most_common(1)[0][0] if counts else 1, self.batch_size))

    def rows_per_batch(self, captions: dict[str, list[str]]) -> int:
        return max(1, round(self.batch_size / self.captions_per_row(captions)))

    def rows(self, captions: dict[str, list[str]]):
        """Packed rows: (feature row per row, per-row token counts, flat inputs, flat targets, flat positions)."""
        per_row = self.captions_per_row(captions)
        by_image: dict[str, list[tuple[int, ...]]] = {}
        for sample in self.samples(captions):
            by_image.setdefault(sample.image_id, []).append(sample.tokens)
        image_rows, lengths, inputs, targets, positions = [], [], [], [], []
        for image_id, sequences in by_image.items():
            for start in range(0, len(sequences), per_row):
                chunk = sequences[start : start + per_row]
                image_rows.append(self.image_index[image_id])
                lengths.append(sum(len(s) - 1 for s in chunk))
                for sequence in chunk:
                    inputs.extend(sequence[:-1])
                    targets.extend(sequence[1:])
                    positions.extend(range(len(sequence) - 1))
        as_array = lambda values, dtype: np.asarray(values, dtype=dtype)  # noqa: E731
        return (
            as_array(image_rows, np.int64),
            as_array(lengths, np.int64),
            as_array(inputs, np.int32),
            as_array(targets, np.int32),
            as_array(positions, np.int32),
        )

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        # Reading the memmap in row order keeps disk access sequential; then restore batch order.
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows),) + self.feature_shape, dtype=self.features.dtype)
        out[order] = self.features[rows[order]]
        return out

    def _to_model_inputs(self, rows, inputs, targets, positions, seed=None):
        features = tf.numpy_function(self._gather, [rows], tf.as_dtype(self.features.dtype), stateful=False)
        features = tf.cast(tf.ensure_shape(features, (None,) + self.feature_shape), tf.float32)
        if seed is not None:
            features = augment_pixels(features, seed, self.augment)
        return (features, inputs, positions), targets

    def _numbered(self, dataset: tf.data.Dataset, epoch) -> tf.data.Dataset:
        """With `augment`, each batch led by its augmentation seed, from (seed, epoch, batch number)."""
        if not self.augment:
            return dataset
        seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(epoch, tf.int64)])
        return dataset.enumerate().map(lambda index, batch: (tf.random.experimental.stateless_fold_in(seed, index), *batch))

    def build(self, captions: dict[str, list[str]], training: bool = True, first_epoch: int | None = None) -> tf.data.Dataset:
        """Batches of ((features, inputs, positions), targets).

        training=False: one pass in a fixed order. training=True: one pass, reshuffled (seeded) on
        every pass. training=True with `first_epoch`: an endless stream of epochs first_epoch,
        first_epoch + 1, ..., each `self.steps(captions)` batches long and shuffled by (seed, epoch);
        pass steps_per_epoch=self.steps(captions) to fit.
        """
        image_rows, lengths, inputs, targets, positions = self.rows(captions)
        if not len(image_rows):
            raise ValueError("no captions to build a dataset from")
        ends = np.cumsum(lengths)
        starts, ends = tf.constant(ends - lengths), tf.constant(ends)
        inputs, targets, positions = (tf.constant(flat) for flat in (inputs, targets, positions))
        image_rows_tensor = tf.constant(image_rows)
        rows_per_batch = self.rows_per_batch(captions)
        boundaries = self._bucket_boundaries(lengths)
        batch_count = self._batch_count(lengths, rows_per_batch)

        def row(index):
            span = slice(starts[index], ends[index])
            return image_rows_tensor[index], inputs[span], targets[span], positions[span]

        def batches(order: tf.data.Dataset) -> tf.data.Dataset:
            """One epoch's batches, rows taken in `order`."""
            dataset = order.map(row)
            if not self.bucket_width:
                return dataset.padded_batch(rows_per_batch)
            dataset = dataset.bucket_by_sequence_length(
                lambda row, inputs, targets, positions: tf.shape(inputs)[0],
                bucket_boundaries=boundaries,
                bucket_batch_sizes=[rows_per_batch] * (len(boundaries) + 1),
            )
            # tf.data cannot know the count of bucketed batches; telling it lets Keras show
            # progress and end the epoch without an "input ran out of data" warning.
            return dataset.apply(tf.data.experimental.assert_cardinality(batch_count))

        count = len(image_rows)
        if not training:
            dataset = batches(tf.data.Dataset.range(count))
        elif first_epoch is None:
            # Shuffle images before bucketing: a full-size buffer gives a true shuffle.
            order = tf.data.Dataset.range(count).shuffle(count, seed=self.seed, reshuffle_each_iteration=True)
            dataset = self._numbered(batches(order), -1)
        else:
            dataset = tf.data.Dataset.range(first_epoch, 2**62).flat_map(
                lambda epoch: self._numbered(batches(tf.data.Dataset.from_tensor_slices(self.epoch_order(count, epoch))), epoch)
            )
        if training and self.augment:
            to_inputs = lambda seed, *batch: self._to_model_inputs(*batch, seed=seed)  # noqa: E731
        else:
            to_inputs = self._to_model_inputs
        dataset = dataset.map(to_inputs, num_parallel_calls=tf.data.AUTOTUNE)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)

    def epoch_order(self, count: int, epoch) -> tf.Tensor:
        """The order of `count` rows in epoch `epoch`: a permutation drawn from (seed, epoch) alone."""
        seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(epoch, tf.int64)])
        return tf.argsort(tf.random.stateless_uniform([count], seed=seed), stable=True)

    def image_features(self, image_ids: list[str]) -> np.ndarray:
        """One array of the given images' features, in order, for decoding: regions in float16 as stored (a COCO
        test split in float32 would take gigabytes; the decoders convert one batch at a time), pooled in float32."""
        return self._gather(np.array([self.image_index[i] for i in image_ids], dtype=np.int64))
