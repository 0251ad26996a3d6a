"""Model stage, normalisation: layer normalisation with a hand-written gradient."""

from __future__ import annotations

import keras
from keras import ops


def _layer_norm(x, gamma, beta, epsilon: float):
    """(x - mean) / sqrt(var + epsilon) * gamma + beta over the last axis, computed in float32 and
    returned in x's dtype; gamma and beta are float32.

    The gradient is the closed form, dx = (g - mean(g) - x_hat * mean(g * x_hat)) / std with
    g = dy * gamma: 13 passes over the activations against ~20 for the autodiff of Keras' version.
    """
    import tensorflow as tf

    @tf.custom_gradient
    def normalize(x, gamma, beta):
        values = tf.cast(x, tf.float32)
        centered = values - tf.reduce_mean(values, axis=-1, keepdims=True)
        inverse_std = tf.math.rsqrt(tf.reduce_mean(tf.square(centered), axis=-1, keepdims=True) + epsilon)
        normalized = centered * inverse_std

        def grad(upstream):
            upstream = tf.cast(upstream, tf.float32)
            scaled = upstream * gamma
            dx = inverse_std * (
                scaled
                - tf.reduce_mean(scaled, axis=-1, keepdims=True)
                - normalized * tf.reduce_mean(scaled * normalized, axis=-1, keepdims=True)
            )
            flat = [-1, tf.shape(upstream)[-1]]
            return (
                tf.cast(dx, x.dtype),
                tf.reduce_sum(tf.reshape(upstream * normalized, flat), axis=0),
                tf.reduce_sum(tf.reshape(upstream, flat), axis=0),
            )

        return tf.cast(normalized * gamma + beta, x.dtype), grad

    return normalize(x, gamma, beta)


@keras.saving.register_keras_serializable(package="training")
class LayerNormalization(keras.layers.LayerNormalization):
    """keras.layers.LayerNormalization; on TensorFlow, over the last axis with both gamma and beta, its
    gradient is written out (`_layer_norm`): the same results, and a shorter W1 training step (figures: bench/RESULTS.md, "Choices in the code").

    The same weights and names as Keras' layer, whose files it loads; other cases use Keras' own call.
    """

    def call(self, inputs):
        last = len(inputs.shape) - 1
        if (
            keras.backend.backend() != "tensorflow"
            or self.rms_scaling
            or not (self.center and self.scale)
            or [axis % (last + 1) for axis in self.axis] != [last]
        ):
            return super().call(inputs)
        # Read outside the custom gradient, which would otherwise have to handle the variables itself.
        gamma, beta = ops.cast(self.gamma, "float32"), ops.cast(self.beta, "float32")
        return ops.cast(_layer_norm(inputs, gamma, beta, self.epsilon), self.compute_dtype)
