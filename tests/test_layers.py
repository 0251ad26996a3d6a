"""Every Keras layer and model the package registers, through one harness: built from tiny shapes, its config
round-tripped, saved to .keras and loaded, run under float32, mixed_bfloat16 and mixed_float16, and trained
one step under each.

The layers come from Keras' registry after importing every module of `training`, so a newly registered layer
is tested as soon as it has a row in CASES, and fails `test_every_registered_layer_has_a_case` until then.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import pytest

import training

B, T, R, F, D, VOCAB = 2, 3, 4, 6, 8, 20  # batch, tokens, regions, feature size, hidden size, vocabulary
TOKENS = np.array([[2, 5, 1], [3, 4, 0]], "int32")  # the second caption padded
POLICIES = ["float32", "mixed_bfloat16", "mixed_float16"]


def floats(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def registered_layers() -> dict[str, type]:
    """{registered name without the package: class} of every Layer (or Model) registered by a module of `training`."""
    for module in pkgutil.walk_packages(training.__path__, "training."):
        importlib.import_module(module.name)
    return {
        name.split(">")[-1]: obj
        for name, obj in keras.saving.get_custom_objects().items()
        if isinstance(obj, type) and issubclass(obj, keras.layers.Layer) and obj.__module__.startswith("training.")
    }


@dataclass
class Case:
    """How to test one registered layer: `make` builds it (under the global dtype policy), `inputs` gives the
    positional arguments of its call and `kwargs` the others; `outputs` is each output's dtype, "compute" for the
    policy's compute dtype; `trains` is None, or why a training step does not apply to it."""

    make: Callable[[], keras.layers.Layer]
    inputs: Callable[[], tuple]
    kwargs: Callable[[], dict] = dict
    outputs: tuple[str, ...] = ("compute",)
    trains: str | None = None
    training_kwarg: bool = True  # its call takes `training`


def components():
    from training.models import components

    return components


def caption_model(architecture):
    from training.models import CaptionModel

    return CaptionModel(
        VOCAB, 7, architecture, feature_dim=F, embedding_dim=5, hidden_dim=D, num_layers=1, num_heads=2, ff_dim=16, dropout=0.1
    )


def patch_conv_encoder():
    from training.features.patches import PatchConvEncoder

    return PatchConvEncoder((2, 2), patch_size=4, filters=(8, 6))


def patch_regions():
    """A 2x2 grid of 4x4-pixel patches: (B, 4 regions, 48 channels)."""
    return floats(B, 4, 4 * 4 * 3)


def backbone_top():
    """A backbone's top as BackboneTop wraps it: a functional network over a 2x2 grid of F channels."""
    from training.features.applications import BackboneTop

    inputs = keras.Input((2, 2, F))
    x = keras.layers.BatchNormalization()(keras.layers.Conv2D(5, 1)(inputs))
    return BackboneTop((2, 2), keras.Model(inputs, keras.layers.ReLU()(x)))


def caption_model_with_encoder():
    from training.models import CaptionModel

    return CaptionModel(
        VOCAB, 7, feature_dim=48, embedding_dim=5, hidden_dim=D, num_layers=1, num_heads=2, ff_dim=16,
        image_encoder=patch_conv_encoder(),
    )  # fmt: skip


def captioner():
    from training.captioner import Captioner
    from training.models import CaptionModel

    model = CaptionModel(VOCAB, 7, feature_dim=192, embedding_dim=5, hidden_dim=D, num_layers=1, num_heads=2, ff_dim=16)
    words = ["<pad>", "<unk>", "startseq", "endseq"] + [f"w{i}" for i in range(VOCAB - 4)]
    return Captioner(model, words, extractor="PatchGrid", image_size=(16, 16), beam_size=2)


def causal_mask():
    visible = np.tril(np.ones((T, T), bool))[None] & (TOKENS != 0)[:, None, :]
    return {"self_mask": visible[:, None]}


def lstm_inputs():
    return floats(B, T, 5), floats(B, R, D, seed=1)


# One row per registered layer (a model with two architectures has a row for each: "Name/variant").
CASES: dict[str, Case] = {
    "Dense": Case(lambda: components().Dense(5), lambda: (floats(B, T, F),)),
    "Dropout": Case(lambda: components().Dropout(0.5, seed=1), lambda: (floats(B, T, D),)),
    "LayerNormalization": Case(
        lambda: components().LayerNormalization(epsilon=1e-5), lambda: (floats(B, T, D),), training_kwarg=False
    ),
    "MultiHeadCrossAttention": Case(
        lambda: components().CachedMultiHeadAttention(D, 2, 0.1), lambda: (floats(B, T, D), floats(B, R, D, seed=1))
    ),
    "BahdanauAttention": Case(
        lambda: components().BahdanauAttention(D),
        lambda: (floats(B, D), floats(B, R, D, seed=1)),
        outputs=("compute", "float32"),  # the context, and the weights over the regions (softmax in float32)
        training_kwarg=False,
    ),
    "ImageProjection": Case(lambda: components().ImageProjection(D, 0.1), lambda: (floats(B, R, F),)),
    "TextEmbedding": Case(lambda: components().TextEmbedding(VOCAB, 5, D, 7, dropout=0.1), lambda: (TOKENS,)),
    "TransformerDecoderBlock": Case(
        lambda: components().TransformerDecoderBlock(D, 2, 16, 0.1),
        lambda: (floats(B, T, D), floats(B, R, D, seed=1)),
        causal_mask,
    ),
    "LSTMAttentionDecoder": Case(
        lambda: components().LSTMAttentionDecoder(D),
        lstm_inputs,
        lambda: {"token_mask": TOKENS != 0},
        training_kwarg=False,
    ),
    "LSTMEncoder": Case(
        lambda: components().LSTMEncoder(D), lstm_inputs, lambda: {"token_mask": TOKENS != 0}, training_kwarg=False
    ),
    # Logits in float32 whatever the policy, so the softmax and loss stay float32.
    "CaptionModel/transformer": Case(
        lambda: caption_model("transformer"), lambda: ((floats(B, R, F), TOKENS),), outputs=("float32",)
    ),
    "CaptionModel/lstm_attention": Case(
        lambda: caption_model("lstm_attention"), lambda: ((floats(B, R, F), TOKENS),), outputs=("float32",)
    ),
    # The trainable image encoder on PatchGrid patches, alone and inside the caption model.
    "BackboneTop": Case(backbone_top, lambda: (floats(B, R, F),)),
    "PatchConvEncoder": Case(patch_conv_encoder, lambda: (patch_regions(),)),
    "CaptionModel/image_encoder": Case(caption_model_with_encoder, lambda: ((patch_regions(), TOKENS),), outputs=("float32",)),
    # Images in [0, 255] -> the float16 region features a feature store holds, whatever the policy.
    "Captioner": Case(
        captioner,
        lambda: (np.random.default_rng(0).uniform(0, 255, (B, 16, 16, 3)).astype("float32"),),
        outputs=("float16",),
        trains="its call extracts features with a weight-free PatchGrid; its CaptionModel trains as the rows above",
        training_kwarg=False,
    ),
}


def test_every_registered_layer_has_a_case():
    registered = set(registered_layers())
    assert registered, "no registered layer found"
    covered = {name.split("/")[0] for name in CASES}
    assert registered - covered == set(), "registered layers without a row in CASES"
    assert covered - registered == set(), "rows in CASES for names not registered"


@pytest.fixture
def policy(request):
    keras.mixed_precision.set_global_policy(getattr(request, "param", "float32"))
    yield keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")


def built(case: Case):
    keras.utils.set_random_seed(0)
    layer = case.make()
    return layer, forward(case, layer)


def forward(case: Case, layer, training=False):
    kwargs = case.kwargs()
    if case.training_kwarg:
        kwargs["training"] = training
    return [keras.ops.convert_to_numpy(x) for x in keras.tree.flatten(layer(*case.inputs(), **kwargs))]


def as_json(config):
    """The config as a .keras file stores it (tuples become lists)."""
    return json.loads(json.dumps(config))


def assert_same(found, expected):
    assert len(found) == len(expected)
    for a, b in zip(found, expected):
        np.testing.assert_allclose(a.astype("float32"), b.astype("float32"), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", CASES)
def test_config_round_trip_gives_the_same_weights_and_outputs(name, policy):
    case = CASES[name]
    layer, outputs = built(case)
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    forward(case, clone)  # builds it
    assert [(w.path, tuple(w.shape)) for w in clone.weights] == [(w.path, tuple(w.shape)) for w in layer.weights]
    clone.set_weights(layer.get_weights())
    assert_same(forward(case, clone), outputs)


@pytest.mark.parametrize("name", CASES)
def test_keras_file_round_trip_gives_the_same_outputs(name, policy, tmp_path):
    case = CASES[name]
    layer, outputs = built(case)
    keras.saving.save_model(layer, tmp_path / "layer.keras")
    loaded = keras.saving.load_model(tmp_path / "layer.keras")
    assert type(loaded) is type(layer) and as_json(loaded.get_config()) == as_json(layer.get_config())
    assert_same(forward(case, loaded), outputs)


def float_outputs(outputs):
    return [x for x in outputs if keras.backend.is_float_dtype(x.dtype)]


@pytest.mark.parametrize("policy", POLICIES, indirect=True)
@pytest.mark.parametrize("name", CASES)
def test_runs_and_trains_one_step_under_each_policy(name, policy):
    """Outputs of the dtypes the policy says, finite; then one FusedAdam step on the mean square of the outputs
    (training mode): the loss is finite and some weight moves, or, for a weightless layer, the gradient reaches
    its inputs."""
    import tensorflow as tf

    from training.models import FusedAdam

    case = CASES[name]
    layer, outputs = built(case)
    expected = [policy.compute_dtype if dtype == "compute" else dtype for dtype in case.outputs]
    assert [str(x.dtype) for x in outputs] == expected
    assert all(np.isfinite(x.astype("float32")).all() for x in float_outputs(outputs))
    if case.trains is not None:
        pytest.skip(f"no training step: {case.trains}")

    inputs = keras.tree.map_structure(tf.constant, case.inputs())
    watched = [x for x in keras.tree.flatten(inputs) if x.dtype.is_floating]
    kwargs = case.kwargs() | ({"training": True} if case.training_kwarg else {})
    before = [keras.ops.convert_to_numpy(v) for v in layer.trainable_variables]
    with tf.GradientTape() as tape:
        tape.watch(watched)
        found = keras.tree.flatten(layer(*inputs, **kwargs))
        loss = tf.add_n([tf.reduce_mean(tf.square(tf.cast(x, "float32"))) for x in found if x.dtype.is_floating])
    assert np.isfinite(float(loss))
    if not layer.trainable_variables:
        gradients = [g for g in tape.gradient(loss, watched) if g is not None]
        assert gradients and all(np.isfinite(g).all() for g in gradients) and any(np.any(g != 0) for g in gradients)
        return
    gradients = tape.gradient(loss, layer.trainable_variables)
    assert all(g is None or np.isfinite(keras.ops.convert_to_numpy(g)).all() for g in gradients)
    FusedAdam(learning_rate=1e-2).apply_gradients([(g, v) for g, v in zip(gradients, layer.trainable_variables) if g is not None])
    assert any(not np.array_equal(keras.ops.convert_to_numpy(v), old) for v, old in zip(layer.trainable_variables, before))
