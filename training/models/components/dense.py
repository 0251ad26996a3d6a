"""Model stage, projections: a Dense layer whose bias gradient is summed in float32."""

from __future__ import annotations

import keras
from keras import ops


def _bias_add(x, bias):
    """x + bias (last axis), with the bias gradient summed by tf.reduce_sum.

    TensorFlow computes that gradient with BiasAddGrad, whose CPU kernel (TensorFlow 2.21) adds
    bfloat16 values in bfloat16: a sum of 832 ones comes out as 256 (256 + 1 rounds to 256). reduce_sum
    adds in float32 and rounds once, and is faster than BiasAddGrad at W1's shapes (figures: bench/RESULTS.md, "Choices in the code").
    """
    import tensorflow as tf

    @tf.custom_gradient
    def add(x, bias):
        def grad(upstream):
            flat = tf.reshape(upstream, [-1, tf.shape(upstream)[-1]])
            return upstream, tf.reduce_sum(flat, axis=0)

        return tf.nn.bias_add(x, bias), grad

    return add(x, bias)


@keras.saving.register_keras_serializable(package="training")
class Dense(keras.layers.Dense):
    """keras.layers.Dense; on TensorFlow its bias gradient is summed in float32 (see `_bias_add`).

    The same weights, names and results as keras.layers.Dense, whose files it loads. Other backends,
    quantized layers and layers without a bias use Keras' own call.
    """

    def call(self, inputs, training=None):
        if self.bias is None or self.quantization_mode or keras.backend.backend() != "tensorflow":
            return super().call(inputs, training=training)
        x = ops.matmul(inputs, self.kernel)
        x = _bias_add(x, ops.cast(self.bias, x.dtype))  # read outside the custom gradient
        return x if self.activation is None else self.activation(x)
