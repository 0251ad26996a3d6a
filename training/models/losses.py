"""Model stage, objective: loss and accuracy over real caption tokens (id 0 is padding).

The optimizer and compiling a model: training/models/optimization.py."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="training")
def masked_sparse_categorical_crossentropy(y_true, y_pred, label_smoothing: float = 0.0):
    """Per-token cross-entropy (from logits), weighted so that Keras' mean is over real tokens only.

    Padding gets weight 0 and real tokens B*T / count(real), as Keras does for masks: the mean
    Keras takes (over B*T) is then the mean over the batch's real tokens, independent of how
    far the batch is padded. Returning (B, T) values rather than a scalar lets Keras scale the
    loss correctly across replicas under a distribution strategy.

    With `label_smoothing` the target is smoothed towards uniform: (1 - label_smoothing) on the true
    word, label_smoothing spread over the whole vocabulary.
    """
    y_true = ops.cast(y_true, "int32")
    logits = ops.cast(y_pred, "float32")
    is_token = ops.cast(ops.not_equal(y_true, 0), "float32")
    if label_smoothing:
        log_probs = ops.log_softmax(logits, axis=-1)
        true_word = -ops.squeeze(ops.take_along_axis(log_probs, ops.expand_dims(y_true, -1), axis=-1), -1)
        per_token = (1.0 - label_smoothing) * true_word - label_smoothing * ops.mean(log_probs, axis=-1)
    else:
        per_token = _true_word_cross_entropy(y_true, logits)
    total = ops.cast(ops.size(is_token), "float32")
    return per_token * is_token * (total / ops.maximum(ops.sum(is_token), 1.0))


def _true_word_cross_entropy(y_true, logits):
    """-log softmax(logits)[y_true] per token, in TensorFlow's fused kernel wherever it is deterministic.

    With op determinism on (`set_global_seed` turns it on for repeatable runs), `tf.nn` swaps that kernel for a
    log-softmax, a gather and, backwards, a scatter of the gather's gradient into a dense (B, T, vocab) tensor,
    because the fused GPU kernel is not deterministic. Its CPU kernel gives the same bits run after run (the resume
    tests compare whole runs' losses), so on CPU it is called directly: 6% of a W1 training step (bench/RESULTS.md)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if not tf.config.list_logical_devices("GPU"):
            cost, _ = tf.raw_ops.SparseSoftmaxCrossEntropyWithLogits(
                features=tf.reshape(logits, [-1, tf.shape(logits)[-1]]), labels=tf.reshape(y_true, [-1])
            )
            return tf.reshape(cost, tf.shape(y_true))
    return keras.losses.sparse_categorical_crossentropy(y_true, logits, from_logits=True)


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
class MaskedLabelSmoothingCrossEntropy(keras.losses.Loss):
    """The masked cross-entropy against targets smoothed towards uniform: (1 - label_smoothing) on the
    true word, label_smoothing spread over the whole vocabulary. A Loss with get_config, so a saved model
    (and a resumed run) reloads it with its setting; weighted like masked_sparse_categorical_crossentropy."""

    def __init__(self, label_smoothing: float = 0.1, name: str = "masked_label_smoothing_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        return masked_sparse_categorical_crossentropy(y_true, y_pred, self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}
