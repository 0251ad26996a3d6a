"""Model stage, objective: loss and accuracy over real caption tokens (id 0 is padding), the optimizer, and compile."""

from __future__ import annotations

import keras
from keras import ops

from training.utils.keras_private import FusedClipByNorm, adam_moments


@keras.saving.register_keras_serializable(package="training")
def masked_sparse_categorical_crossentropy(y_true, y_pred):
    """Per-token cross-entropy (from logits), weighted so that Keras' mean is over real tokens only.

    Padding gets weight 0 and real tokens B*T / count(real), as Keras does for masks: the mean
    Keras takes (over B*T) is then the mean over the batch's real tokens, independent of how
    far the batch is padded. Returning (B, T) values rather than a scalar lets Keras scale the
    loss correctly across replicas under a distribution strategy.
    """
    y_true = ops.cast(y_true, "int32")
    is_token = ops.cast(ops.not_equal(y_true, 0), "float32")
    per_token = keras.losses.sparse_categorical_crossentropy(y_true, ops.cast(y_pred, "float32"), from_logits=True)
    total = ops.cast(ops.size(is_token), "float32")
    return per_token * is_token * (total / ops.maximum(ops.sum(is_token), 1.0))


@keras.saving.register_keras_serializable(package="training")
def masked_accuracy(y_true, y_pred):
    """Fraction of non-padding targets whose logit is the largest (the arg-max; a target tied
    with another token for the largest logit counts as a hit: rare in float32, less so with the
    logits of a mixed_bfloat16 model, rounded to 8 significant bits, which can read a little high)."""
    y_true = ops.cast(y_true, "int32")
    is_token = ops.not_equal(y_true, 0)
    # Compared with the max rather than through ops.argmax, whose TensorFlow version spends five
    # extra passes over the (B, T, vocab) logits on negative zeros, every training step.
    target_logit = ops.squeeze(ops.take_along_axis(y_pred, ops.expand_dims(y_true, -1), axis=-1), -1)
    hits = ops.logical_and(target_logit >= ops.max(y_pred, axis=-1), is_token)
    return ops.sum(ops.cast(hits, "float32")) / ops.maximum(ops.sum(ops.cast(is_token, "float32")), 1.0)


@keras.saving.register_keras_serializable(package="training")
class FusedAdam(FusedClipByNorm, keras.optimizers.Adam):
    """keras.optimizers.Adam, updating each variable with TensorFlow's fused Adam kernel.

    Same algorithm, settings, state variables and checkpoints as Keras' Adam. Keras writes the
    update as about a dozen element-wise ops per variable, each a pass over the variable and
    its two moments; on 2 CPU cores that was ~15% of a W1 training step (bench/train.py), and
    ResourceApplyAdam does it in one. Other backends, and amsgrad, use Keras' own update.
    Clipping by norm (clipnorm) likewise reads each gradient twice instead of four times.
    The Keras internals this needs are in training/utils/keras_private.py.
    """

    def update_step(self, gradient, variable, learning_rate):
        if keras.backend.backend() != "tensorflow" or self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        import tensorflow as tf

        dtype = variable.dtype
        momentum, velocity = adam_moments(self, variable)
        step = ops.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = ops.cast(self.beta_1, dtype), ops.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=momentum.handle,
            v=velocity.handle,
            beta1_power=ops.power(beta_1, step),
            beta2_power=ops.power(beta_2, step),
            lr=ops.cast(learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=ops.cast(self.epsilon, dtype),
            grad=ops.cast(gradient, dtype),
        )


def compile_caption_model(model: keras.Model, learning_rate: float, clipnorm: float | None = None,
                          jit_compile: bool | str = "auto", loss=None) -> keras.Model:
    """Compile with Adam and the masked loss/accuracy; `jit_compile` as in keras.Model.compile. Returns the model.

    `learning_rate` may be a keras LearningRateSchedule; `loss` replaces the masked cross-entropy
    (e.g. MaskedLabelSmoothingCrossEntropy)."""
    model.compile(
        optimizer=FusedAdam(learning_rate=learning_rate, clipnorm=clipnorm),
        loss=loss or masked_sparse_categorical_crossentropy,
        metrics=[masked_accuracy],
        jit_compile=jit_compile,
    )
    return model


@keras.saving.register_keras_serializable(package="training")
class MaskedLabelSmoothingCrossEntropy(keras.losses.Loss):
    """The masked cross-entropy against targets smoothed towards uniform: (1 - label_smoothing) on the
    true word, label_smoothing spread over the whole vocabulary. A Loss with get_config, so a saved model
    (and a resumed run) reloads it with its setting; weighted like masked_sparse_categorical_crossentropy."""

    def __init__(self, label_smoothing: float = 0.1, name: str = "masked_label_smoothing_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "int32")
        is_token = ops.cast(ops.not_equal(y_true, 0), "float32")
        log_probs = ops.log_softmax(ops.cast(y_pred, "float32"), axis=-1)
        true_word = -ops.squeeze(ops.take_along_axis(log_probs, ops.expand_dims(y_true, -1), axis=-1), -1)
        uniform = -ops.mean(log_probs, axis=-1)
        per_token = (1.0 - self.label_smoothing) * true_word + self.label_smoothing * uniform
        total = ops.cast(ops.size(is_token), "float32")
        return per_token * is_token * (total / ops.maximum(ops.sum(is_token), 1.0))

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}
