"""Model stage, regularisation: dropout that draws 8 (or 16) random bits per value instead of 32."""

from __future__ import annotations

import keras
from keras import ops

# 8 random bits per value when they give the rate within this share of itself, else 16.
_RATE_TOLERANCE = 0.02


def random_bits(rate: float) -> int:
    """8 when round(rate * 256) / 256 is within 2% of `rate` (0.1 -> 0.1016, 0.05 -> 0.0508), else 16
    (0.01 -> 0.01001)."""
    return 8 if abs(round(rate * 256) / 256 - rate) <= _RATE_TOLERANCE * rate else 16


@keras.saving.register_keras_serializable(package="training")
class Dropout(keras.layers.Dropout):
    """keras.layers.Dropout, cheaper on TensorFlow: each value is kept when `random_bits(rate)` random
    bits (8, or 16 for rates 8 bits cannot express within 2%) are at least round(rate * 2**bits), and
    scaled by the exact inverse of that keep probability.

    Keras' TensorFlow dropout draws a float32 uniform per value and applies it as a select forward
    and another backward: drawing random bits, selects, compares and multiplies were a noticeable share
    of a W1 training step on CPU (figures: bench/RESULTS.md, "Choices in the code"). Here one 32-bit draw serves four values (8 bits
    each), and the mask becomes one tensor of 0 or 1/keep in the input's dtype, so forward and
    backward are one multiply each. The rate used is round(rate * 2**bits) / 2**bits (0.1 -> 0.1016).
    Other backends, and noise_shape, use Keras' own dropout.
    """

    def call(self, inputs, training=False):
        if not training or self.rate == 0 or self.noise_shape is not None or keras.backend.backend() != "tensorflow":
            return super().call(inputs, training=training)
        import tensorflow as tf

        bits = random_bits(self.rate)
        threshold = round(self.rate * 2**bits)
        if threshold >= 2**bits:
            return ops.zeros_like(inputs)
        unsigned = tf.uint8 if bits == 8 else tf.uint16
        per_word = 32 // bits
        # Stateless ops take int32 seeds; Keras' own TensorFlow dropout folds its int64 state the same way.
        seed = tf.cast(tf.math.floormod(self.seed_generator.next(), tf.int32.max - 1), tf.int32)
        size = tf.size(inputs)
        words = tf.random.stateless_uniform(
            [(size + per_word - 1) // per_word], seed=seed, minval=None, maxval=None, dtype=tf.uint32
        )
        values = tf.reshape(tf.reshape(tf.bitcast(words, unsigned), [-1])[:size], tf.shape(inputs))
        scale = tf.constant(2**bits / (2**bits - threshold), inputs.dtype)
        mask = tf.where(values >= tf.constant(threshold, unsigned), scale, tf.zeros([], inputs.dtype))
        return inputs * tf.stop_gradient(mask)
