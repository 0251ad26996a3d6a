"""Every use of a private Keras or TensorFlow API, in one place, each with what has to happen for it to go.

Keras is pinned to the minor release these were tested with (pyproject.toml). Before moving the
pin, run tests/test_keras_private.py: it checks that each name below still exists and that the
fused optimizer still matches keras.optimizers.Adam.
"""

from __future__ import annotations

import types

import keras


def build_training_state(model, data_batch) -> bool:
    """Create the optimizer's, loss tracker's and metrics' variables from a symbolic batch; False if unsupported.

    Private: `Model._symbolic_build` (keras/src/trainers/trainer.py). Keras calls it itself under a
    distribution strategy only; without one the variables are made inside the first traced train
    step, which tf.function then traces a second time (seconds per run). Can go when
    Keras builds them before the first trace in every case, or gives this a public name.
    """
    if not hasattr(model, "_symbolic_build"):
        return False
    model._symbolic_build(data_batch=data_batch)
    return True


def build_metrics_from_one_replica(model) -> None:
    """Under MultiWorkerMirroredStrategy, let Keras build the metrics from the first local replica's batch.

    Private: `Model._maybe_symbolic_build` (keras/src/backend/tensorflow/trainer.py), overridden on
    this model only. Keras reduces the whole first batch across replicas as one nested value, which
    MultiWorkerMirroredStrategy cannot reduce; only shapes and dtypes matter there. Can go when
    Keras' TensorFlow trainer builds from per-replica values (it fails today with "Cannot reduce").
    """

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        import tensorflow as tf

        if iterator is not None and data_batch is None:
            for _, _, batches in iterator:
                batch = next(batches)
                break
            local = self.distribute_strategy.experimental_local_results
            data_batch = tf.nest.map_structure(
                lambda v: local(v)[0] if isinstance(v, tf.distribute.DistributedValues) else v, batch
            )
        return type(self)._maybe_symbolic_build(self, data_batch=data_batch)

    model._maybe_symbolic_build = types.MethodType(maybe_symbolic_build, model)


def reduce_scalars_across_workers() -> None:
    """Make Keras 3's fit reduce scalar step outputs (loss, metrics) with axis=None under MultiWorkerMirroredStrategy.

    Private: `keras.src.backend.tensorflow.trainer.reduce_per_replica`, replaced module-wide (once).
    Keras reduces every output with axis=0, which fails on scalars (tensorflow/tensorflow#72388).
    Can go when that issue is fixed in the pinned Keras.
    """
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as keras_tf_trainer

    keras_reduce = keras_tf_trainer.reduce_per_replica
    if getattr(keras_reduce, "reduces_scalars", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction not in ("auto", "mean") or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return keras_reduce(values, strategy, reduction)

        def reduce(value):
            local = strategy.experimental_local_results(value)[0] if isinstance(value, tf.distribute.DistributedValues) else value
            return strategy.reduce("MEAN", value, axis=0 if local.shape.rank else None)

        return tf.nest.map_structure(reduce, values)

    reduce_per_replica.reduces_scalars = True
    keras_tf_trainer.reduce_per_replica = reduce_per_replica


class FusedClipByNorm:
    """Optimizer mixin: clipnorm reads each gradient twice instead of four times (TensorFlow backend).

    Private: `Optimizer._clip_by_norm(values, axes)`, the hook Keras' clipnorm calls per gradient
    (keras/src/optimizers/base_optimizer.py). Can go when Keras' own version fuses the sum of
    squares (or when the few percent of a training step it saves stop mattering: bench/train.py).
    """

    def _clip_by_norm(self, values, axes=None):
        if keras.backend.backend() != "tensorflow" or axes is not None:
            return super()._clip_by_norm(values, axes)
        import tensorflow as tf

        norm = keras.ops.sqrt(2.0 * tf.nn.l2_loss(values))  # l2_loss = sum(values ** 2) / 2, one fused pass
        return values * (self.clipnorm / keras.ops.maximum(norm, self.clipnorm))


def adam_moments(optimizer: keras.optimizers.Adam, variable) -> tuple:
    """The first and second moment variables Keras' Adam keeps for `variable`.

    Private: `Adam._momentums`, `Adam._velocities` and `Optimizer._get_variable_index`. Can go when
    Keras' Adam uses TensorFlow's fused ResourceApplyAdam itself, or exposes its slots publicly.
    """
    index = optimizer._get_variable_index(variable)
    return optimizer._momentums[index], optimizer._velocities[index]


def onednn_enabled() -> bool:
    """Whether TensorFlow runs its oneDNN kernels in this process (False with TF_ENABLE_ONEDNN_OPTS=0).

    Private: `tensorflow.python.util._pywrap_util_port.IsMklEnabled`. TensorFlow's public
    tf.sysconfig.get_build_info() says how it was built, not whether oneDNN is on now. Can go when
    TensorFlow exposes that publicly. Returns False when the private name is gone.
    """
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return False


def read_variables_once(variables, dtype: str):
    """A scope in which Keras reads each of `variables` from a tensor taken once, at entry, and already
    cast to `dtype` where Keras' mixed precision would cast it to `dtype` at use.

    Inside a `tf.while_loop` Keras reads and casts every variable at every step (a decode step of the
    W1 model cast ~2.5M weights from float32 to bfloat16, more than its own matmuls read); read before
    the loop, they are loop constants. The values are the same: the cast is the one Keras would make.
    Only for code that does not assign the variables (an assignment inside would be dropped).

    Private: `StatelessScope.get_current_value` as `Variable.value` calls it, `get_autocast_scope` and
    `Variable._autocast` (keras/src/backend/common/). Can go when Keras offers a public way to hoist
    variable reads and casts out of a loop.
    """
    import tensorflow as tf
    from keras.src.backend.common.variables import get_autocast_scope, is_float_dtype, standardize_dtype

    dtype = standardize_dtype(dtype)

    class ReadOnce(keras.StatelessScope):
        def __init__(self):
            super().__init__()
            # Not `state_mapping`: StatelessScope would cast the values back to each variable's dtype.
            self.plain = {id(v): tf.convert_to_tensor(v.value) for v in variables}  # a read, not the variable
            floats = {id(v) for v in variables if is_float_dtype(v.dtype)}
            self.cast = {key: keras.ops.cast(value, dtype) for key, value in self.plain.items() if key in floats}

        def get_current_value(self, variable):
            scope = get_autocast_scope()
            if variable._autocast and scope is not None and scope.dtype == dtype and id(variable) in self.cast:
                return self.cast[id(variable)]
            return self.plain.get(id(variable))

    return ReadOnce()
