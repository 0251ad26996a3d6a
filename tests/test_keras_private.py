"""The private Keras/TensorFlow names training/utils/keras_private.py relies on, and the fused Adam built on them."""

from importlib import metadata

import keras
import numpy as np
import pytest
import tensorflow as tf

from training.models.optimization import FusedAdam
from training.utils import keras_private


def test_the_private_names_still_exist_in_the_pinned_keras():
    from keras.src.backend.tensorflow import trainer as keras_tf_trainer
    from tensorflow.python.util import _pywrap_util_port

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    assert callable(model._symbolic_build) and callable(model._maybe_symbolic_build)
    assert callable(keras_tf_trainer.reduce_per_replica)
    assert callable(keras.optimizers.Adam._clip_by_norm) and callable(keras.optimizers.Adam._get_variable_index)
    assert isinstance(_pywrap_util_port.IsMklEnabled(), bool)
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    momentum, velocity = keras_private.adam_moments(optimizer, model.trainable_variables[0])
    assert momentum.shape == velocity.shape == model.trainable_variables[0].shape
    assert momentum is not velocity
    pinned = metadata.version("keras").split(".")[:2]
    requirement = next(r for r in metadata.requires("image-captioning-training") if r.startswith("keras"))
    assert requirement.replace(" ", "") == f"keras=={'.'.join(pinned)}.*", (requirement, pinned)


def run_steps(optimizer, steps: int = 6):
    """Apply the same gradients `steps` times from zero weights; return (weights, first moments, second moments)."""
    rng = np.random.default_rng(0)
    shapes = [(7, 5), (5,), (3, 4, 2)]
    variables = [keras.Variable(np.zeros(shape, "float32")) for shape in shapes]
    # Large gradients (norm > clipnorm, so they are clipped) for the matrices, small ones for the bias.
    scales = [10.0, 0.05, 3.0]
    for _ in range(steps):
        grads = [tf.constant(scale * rng.standard_normal(shape), tf.float32) for shape, scale in zip(shapes, scales)]
        optimizer.apply_gradients(zip(grads, variables))
    moments = [keras_private.adam_moments(optimizer, v) for v in variables]
    return ([v.numpy() for v in variables], [m.numpy() for m, _ in moments], [s.numpy() for _, s in moments])


@pytest.mark.parametrize("clipnorm", [1.0, None])
def test_fused_adam_updates_match_keras_adam(clipnorm):
    settings = dict(learning_rate=0.01, beta_1=0.8, beta_2=0.95, epsilon=1e-6, clipnorm=clipnorm)
    fused = run_steps(FusedAdam(**settings))
    reference = run_steps(keras.optimizers.Adam(**settings))
    # Weights start at zero, so the weights are the summed updates and rtol applies to the updates themselves.
    for fused_part, reference_part in zip(fused, reference):
        for a, b in zip(fused_part, reference_part):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-12)
    assert np.abs(fused[0][0]).max() > 0.01  # the steps did move the weights
    if clipnorm:
        unclipped = run_steps(FusedAdam(**dict(settings, clipnorm=None)))
        assert not np.allclose(unclipped[1][0], fused[1][0])  # clipping changed the large gradients' moments
        np.testing.assert_allclose(unclipped[1][1], fused[1][1], rtol=1e-6)  # and left the small ones alone
