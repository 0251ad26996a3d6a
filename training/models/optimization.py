"""Model stage, optimisation: the optimizer (FusedAdam), the learning-rate schedule, and compiling a caption model."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from training.configs.training_config import Config, TrainingConfig
from training.models.losses import MaskedLabelSmoothingCrossEntropy, masked_accuracy, masked_sparse_categorical_crossentropy
from training.utils import keras_private
from training.utils.keras_private import FusedClipByNorm, adam_moments


@keras.saving.register_keras_serializable(package="training")
class FusedAdam(FusedClipByNorm, keras.optimizers.Adam):
    """keras.optimizers.Adam, updating each variable with TensorFlow's fused Adam kernel.

    Same algorithm, settings, state variables and checkpoints as Keras' Adam. Keras writes the
    update as about a dozen element-wise ops per variable, each a pass over the variable and
    its two moments (a large share of a W1 training step on CPU: bench/RESULTS.md), and
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


def learning_rate_schedule(training: TrainingConfig, steps_per_epoch: int | None = None):
    """learning_rate (decayed on plateau by a callback), or under warmup_cosine a serializable schedule:
    linear warm-up from 0 over warmup_steps to learning_rate, then cosine decay to min_learning_rate at the
    last step of `epochs`. It is saved with the optimizer, so a resumed run continues it; a run extended
    to more epochs keeps the saved schedule, which stays at min_learning_rate after the old last step."""
    t = getattr(training, "training", training)
    if t.lr_schedule != "warmup_cosine":
        return t.learning_rate
    if not steps_per_epoch:
        raise ValueError("lr_schedule warmup_cosine needs the steps per epoch (Trainer.steps_per_epoch)")
    total = t.epochs * steps_per_epoch
    warmup = min(t.warmup_steps, total)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(1, total - warmup),
        alpha=t.min_learning_rate / t.learning_rate,
        warmup_target=t.learning_rate,
        warmup_steps=warmup,
    )


def compile_caption_model(model: keras.Model, config: Config | TrainingConfig, steps_per_epoch: int | None = None) -> keras.Model:
    """Compile as training does: FusedAdam with the config's learning rate (or warmup_cosine schedule, which
    needs `steps_per_epoch`) and clipnorm, the masked cross-entropy (label-smoothed with label_smoothing),
    masked accuracy, XLA if use_xla. `config` is a Config or its TrainingConfig. Returns the model.

    The optimizer's, loss tracker's and metrics' variables are created here, not in the first step."""
    t = getattr(config, "training", config)
    model.compile(
        optimizer=FusedAdam(learning_rate=learning_rate_schedule(t, steps_per_epoch), clipnorm=t.clipnorm),
        loss=MaskedLabelSmoothingCrossEntropy(t.label_smoothing) if t.label_smoothing else masked_sparse_categorical_crossentropy,
        metrics=[masked_accuracy],
        jit_compile=t.use_xla,
    )
    _build_training_state(model)
    return model


def _build_training_state(model) -> None:
    """Create the optimizer's, loss tracker's and metrics' variables now, from a symbolic batch.

    Keras otherwise creates them inside the first traced train step, and tf.function then traces
    the whole step a second time, which lengthens every run's first step by seconds.
    """
    tokens = np.ones((1, 2), dtype="int32")
    regions = getattr(model, "input_regions", None) or 1
    batch = ((np.zeros((1, regions, getattr(model, "feature_dim", 1)), "float32"), tokens), tokens)
    if not hasattr(model, "feature_dim") or not keras_private.build_training_state(model, batch):
        model.optimizer.build(model.trainable_variables)
