"""Tests for the model stage: shapes, masking, decoding cache, save/load, embeddings, precision."""

import dataclasses
import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from training.configs import ModelConfig
from training.configs.training_config import TrainingConfig
from training.evaluation.inference import cache_shape_invariants
from training.models import (
    CaptionModel,
    build_caption_model,
    compile_caption_model,
    masked_accuracy,
    masked_sparse_categorical_crossentropy,
)

ARCHS = ["transformer", "lstm_attention"]
VOCAB, MAX_LEN, FEATURE_DIM, REGIONS = 20, 7, 6, 4


def tiny_config(architecture, **overrides):
    settings = dict(
        architecture=architecture,
        feature_dim=FEATURE_DIM,
        embedding_dim=5,
        hidden_dim=8,
        num_layers=2,
        num_heads=2,
        ff_dim=16,
        dropout=0.1,
    )
    settings.update(overrides)
    return ModelConfig(**settings)


def tiny_model(architecture, **overrides):
    keras.utils.set_random_seed(0)
    return build_caption_model(tiny_config(architecture, **overrides), VOCAB, MAX_LEN)


def tiny_batch(regions=REGIONS, seed=0):
    """Three captions of lengths 3, 2 and 5, padded to T=5."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(3, regions, FEATURE_DIM)).astype("float32")
    tokens = np.array([[1, 2, 3, 0, 0], [4, 5, 0, 0, 0], [1, 6, 7, 8, 9]], dtype="int32")
    return features, tokens


def real_positions(tokens):
    return tokens != 0


@pytest.mark.parametrize("regions", [REGIONS, 1], ids=["regions", "pooled"])
@pytest.mark.parametrize("architecture", ARCHS)
def test_output_shapes_and_dtype(architecture, regions):
    model = tiny_model(architecture)
    assert isinstance(model, CaptionModel)
    features, tokens = tiny_batch(regions)
    for length in (5, 2):  # batches are padded to their own longest caption
        logits = model((features, tokens[:, :length]))
        assert tuple(logits.shape) == (3, length, VOCAB)
        assert logits.dtype == "float32"
    memory = model.encode(features)
    logits, cache, attention = model.decode_step(tokens[:, 0], np.int32(0), memory, model.init_cache(3))
    assert tuple(logits.shape) == (3, VOCAB) and tuple(attention.shape) == (3, regions)
    np.testing.assert_allclose(keras.ops.sum(attention, axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("architecture", ARCHS)
def test_decode_step_matches_full_call(architecture):
    model = tiny_model(architecture)
    features, tokens = tiny_batch()

    @tf.function
    def decode_all(features, tokens):
        # A graph-mode loop over a tensor step, as the decoders run it.
        memory = model.encode(features)

        def body(step, cache, steps):
            logits, cache, _ = model.decode_step(tokens[:, step], step, memory, cache)
            return step + 1, cache, steps.write(step, logits)

        cache = model.init_cache(tf.shape(features)[0])
        steps = tf.TensorArray(tf.float32, size=tf.shape(tokens)[1])
        # The transformer's cache grows by a position per step.
        invariants = (tf.TensorShape([]), cache_shape_invariants(cache), tf.TensorShape(None))
        _, _, steps = tf.while_loop(
            lambda step, *_: step < tf.shape(tokens)[1], body, (0, cache, steps), shape_invariants=invariants
        )
        return tf.transpose(steps.stack(), (1, 0, 2))

    stepped = decode_all(features, tokens).numpy()
    full = keras.ops.convert_to_numpy(model((features, tokens), training=False))
    mask = real_positions(tokens)  # padding positions are free to differ
    np.testing.assert_allclose(stepped[mask], full[mask], atol=1e-4)


@pytest.mark.parametrize("architecture", ARCHS)
def test_decode_step_with_each_images_memory_once_equals_repeated_memory(architecture):
    # Beam search passes an image's memory once for its k hypothesis rows.
    model = tiny_model(architecture)
    features, tokens = tiny_batch()
    k = 2
    rows = np.repeat(tokens, k, axis=0)
    rows[1::k] = tokens[::-1]  # each image's two rows hold different prefixes
    shared, repeated = model.encode(features), model.encode(np.repeat(features, k, axis=0))
    caches = [model.init_cache(len(rows)), model.init_cache(len(rows))]
    for step in range(rows.shape[1]):
        outputs = [
            model.decode_step(rows[:, step], np.int32(step), memory, cache) for memory, cache in zip((shared, repeated), caches)
        ]
        caches = [outputs[0][1], outputs[1][1]]
        for a, b in zip(outputs[0][::2], outputs[1][::2]):  # logits, attention
            np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), atol=1e-5)


@pytest.mark.parametrize("architecture", ARCHS)
def test_padding_changes_neither_loss_nor_real_logits(architecture):
    model = tiny_model(architecture)
    features, tokens = tiny_batch()
    targets = np.array([[2, 3, 10, 0, 0], [5, 11, 0, 0, 0], [6, 7, 8, 9, 12]], dtype="int32")
    mask = real_positions(targets)
    logits = keras.ops.convert_to_numpy(model((features, tokens)))

    # Garbage in the inputs beyond each caption's end, and extra padding columns.
    noisy = np.where(tokens == 0, np.random.default_rng(1).integers(1, VOCAB, tokens.shape), tokens)
    noisy_logits = keras.ops.convert_to_numpy(model((features, noisy)))
    np.testing.assert_allclose(noisy_logits[mask], logits[mask], atol=1e-5)
    longer = np.pad(tokens, ((0, 0), (0, 2)))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model((features, longer)))[:, :5][mask], logits[mask], atol=1e-5)

    loss = batch_loss((targets, logits))
    shifted = logits + 50.0 * (~mask)[..., None] * np.random.default_rng(2).normal(size=logits.shape)
    assert batch_loss((targets, shifted)) == pytest.approx(loss, abs=1e-6)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0][mask].mean()
    assert loss == pytest.approx(expected, rel=1e-5)
    hits = (logits.argmax(-1) == targets)[mask].mean()
    assert float(masked_accuracy(targets, shifted)) == pytest.approx(hits)


def test_label_smoothing_is_the_masked_loss_against_smoothed_targets():
    from training.models.losses import MaskedLabelSmoothingCrossEntropy

    rng = np.random.default_rng(5)
    logits = rng.normal(size=(2, 4, VOCAB)).astype("float32")
    targets = np.array([[3, 4, 0, 0], [5, 6, 7, 0]], "int32")
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    smoothed = np.full(logits.shape, 0.1 / VOCAB) + 0.9 * np.eye(VOCAB)[targets]
    expected = -(smoothed * log_probs).sum(-1)[targets > 0].mean()  # the mean over real tokens
    loss = MaskedLabelSmoothingCrossEntropy(0.1)
    assert float(loss(targets, logits)) == pytest.approx(expected, rel=1e-5)
    plain = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0][targets > 0].mean()
    assert float(MaskedLabelSmoothingCrossEntropy(0.0)(targets, logits)) == pytest.approx(plain, rel=1e-5)
    assert batch_loss((targets, logits)) == pytest.approx(plain, rel=1e-5)


def test_the_loss_gradient_is_softmax_minus_the_true_word_on_real_tokens_only():
    # The loss calls TensorFlow's fused kernel directly on CPU; its gradient is checked against the formula.
    import tensorflow as tf

    rng = np.random.default_rng(6)
    logits = tf.constant(rng.normal(size=(2, 4, VOCAB)).astype("float32"))
    targets = np.array([[3, 4, 0, 0], [5, 6, 7, 0]], "int32")
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = tf.reduce_mean(masked_sparse_categorical_crossentropy(targets, logits))
    probs = np.exp(logits.numpy()) / np.exp(logits.numpy()).sum(-1, keepdims=True)
    expected = (probs - np.eye(VOCAB)[targets]) * (targets > 0)[..., None] / (targets > 0).sum()
    np.testing.assert_allclose(tape.gradient(loss, logits).numpy(), expected, atol=1e-6)


def batch_loss(args):
    """The loss Keras reports for a batch: the mean of the weighted per-token values."""
    return float(np.mean(keras.ops.convert_to_numpy(masked_sparse_categorical_crossentropy(*args))))


@pytest.mark.parametrize("architecture", ARCHS)
def test_tiny_model_overfits_eight_captions(architecture):
    model = tiny_model(architecture, hidden_dim=16, num_layers=1, dropout=0.0)
    compile_caption_model(model, TrainingConfig(learning_rate=2e-2, clipnorm=None))
    rng = np.random.default_rng(0)
    features = rng.normal(size=(8, REGIONS, FEATURE_DIM)).astype("float32")
    captions = rng.integers(1, VOCAB, size=(8, 6)).astype("int32")
    captions[[1, 4], 4:] = 0  # two shorter captions
    inputs, targets = captions[:, :-1], captions[:, 1:]
    # One epoch of 200 identical batches: a single compiled train function, no per-epoch overhead.
    data = tf.data.Dataset.from_tensors(((features, inputs), targets)).repeat(200)
    model.fit(data, shuffle=False, verbose=0)
    logits = model((features, inputs))
    assert batch_loss((targets, logits)) < 0.05
    assert float(masked_accuracy(targets, logits)) == 1.0


@pytest.mark.parametrize("architecture", ARCHS)
def test_save_load_gives_identical_predictions(architecture, tmp_path):
    model = tiny_model(architecture)
    compile_caption_model(model, TrainingConfig(learning_rate=1e-3, clipnorm=1.0))
    model.run_eagerly = True  # one step: tracing a train function would cost more than it runs
    features, tokens = tiny_batch()
    model.train_on_batch((features, tokens), tokens)  # moves weights and creates optimizer state
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, CaptionModel) and loaded.get_config() == model.get_config()
    np.testing.assert_allclose(loaded((features, tokens)), model((features, tokens)), atol=1e-6)
    memory = loaded.encode(features)
    assert loaded.decode_step(tokens[:, 0], np.int32(0), memory, loaded.init_cache(3))[0].shape == (3, VOCAB)
    assert loaded.loss is masked_sparse_categorical_crossentropy


@pytest.mark.parametrize("architecture", ARCHS)
def test_a_bfloat16_model_loads_in_bfloat16_in_a_float32_process(architecture, tmp_path):
    """A model trained in mixed_bfloat16 and loaded where the global policy is float32 (training.evaluate,
    training.caption, serving) computes as it did when the run scored it: every layer in its saved policy."""
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = tiny_model(architecture)
        features, tokens = tiny_batch()
        expected = model((features, tokens))
        model.save(tmp_path / "model.keras")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    policies = {layer.dtype_policy.name for layer in loaded._flatten_layers(include_self=True)}
    assert policies == {"mixed_bfloat16"}
    assert keras.mixed_precision.global_policy().name == "float32"  # the process's own policy is left as it was
    np.testing.assert_array_equal(loaded((features, tokens)), expected)


@pytest.mark.parametrize("train_embeddings", [False, True])
def test_embedding_matrix_loaded_and_frozen_unless_trained(train_embeddings):
    config = tiny_config("transformer", train_embeddings=train_embeddings)
    matrix = np.random.default_rng(0).normal(size=(VOCAB, config.embedding_dim)).astype("float32")
    model = build_caption_model(config, VOCAB, MAX_LEN, embedding_matrix=matrix)
    table = model.text_embedding.token_embedding.embeddings
    np.testing.assert_array_equal(np.asarray(table), matrix)
    assert any(w is table for w in model.trainable_weights) == train_embeddings
    compile_caption_model(model, TrainingConfig(learning_rate=1e-1, clipnorm=None))
    model.run_eagerly = True
    features, tokens = tiny_batch()
    model.train_on_batch((features, tokens), tokens)
    unchanged = np.array_equal(np.asarray(table), matrix)
    assert unchanged != train_embeddings

    with pytest.raises(ValueError, match="embedding_matrix has shape"):
        build_caption_model(config, VOCAB + 1, MAX_LEN, embedding_matrix=matrix)


def test_embedding_without_matrix_is_trained():
    config = tiny_config("lstm_attention", train_embeddings=False)
    model = build_caption_model(config, VOCAB, MAX_LEN)
    assert model.text_embedding.token_embedding.trainable


@pytest.mark.parametrize("architecture", ARCHS)
def test_mixed_float16_outputs_float32(architecture):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = tiny_model(architecture)
        features, tokens = tiny_batch()
        assert model.compute_dtype == "float16"
        assert model((features, tokens)).dtype == "float32"
        logits, cache, attention = model.decode_step(tokens[:, 0], np.int32(0), model.encode(features), model.init_cache(3))
        assert logits.dtype == "float32" and attention.dtype == "float32"
        compile_caption_model(model, TrainingConfig(learning_rate=1e-3, clipnorm=None))
        model.run_eagerly = True
        loss = model.train_on_batch((features, tokens), tokens)[0]
        assert np.isfinite(loss)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_config_round_trip_uses_every_setting():
    config = dataclasses.replace(tiny_config("transformer"), num_layers=3)
    model = build_caption_model(config, VOCAB, MAX_LEN)
    assert len(model.decoder_blocks) == 3
    clone = CaptionModel.from_config(model.get_config())
    assert clone.get_config() == model.get_config()


@pytest.mark.parametrize("architecture", ARCHS)
def test_compiled_fit_on_batches_of_varying_length(architecture):
    # The pipeline pads each batch to its own longest caption: the time axis is unknown when traced.
    model = tiny_model(architecture, dropout=0.0)
    compile_caption_model(model, TrainingConfig(learning_rate=1e-2, clipnorm=None))
    rng = np.random.default_rng(3)

    def batches():
        for length in (5, 2, 4):
            features = rng.normal(size=(3, REGIONS, FEATURE_DIM)).astype("float32")
            tokens = rng.integers(1, VOCAB, size=(3, length + 1)).astype("int32")
            yield (features, tokens[:, :-1]), tokens[:, 1:]

    spec = (
        (tf.TensorSpec((None, REGIONS, FEATURE_DIM), tf.float32), tf.TensorSpec((None, None), tf.int32)),
        tf.TensorSpec((None, None), tf.int32),
    )
    dataset = tf.data.Dataset.from_generator(batches, output_signature=spec).repeat()
    history = model.fit(dataset, epochs=2, steps_per_epoch=3, shuffle=False, verbose=0)  # the pipeline's way
    assert all(np.isfinite(history.history["loss"]))


@pytest.mark.parametrize("rate", [0.01, 0.1, 0.5])
def test_dropout_drops_its_rate_and_keeps_the_mean(rate):
    from training.models.components import Dropout
    from training.models.components.dropout import random_bits

    layer = Dropout(rate, seed=0)
    inputs = tf.ones([200, 1000])
    dropped = layer(inputs, training=True).numpy()
    bits = random_bits(rate)  # 8 for 0.1 and 0.5; 16 for 0.01, which 8 bits would make 0.0117
    assert bits == (16 if rate == 0.01 else 8)
    used = round(rate * 2**bits) / 2**bits
    assert abs(used - rate) <= 0.02 * rate and abs((dropped == 0).mean() - used) < 0.002
    assert abs(dropped.mean() - 1.0) < 0.01  # kept values are scaled by 1 / keep probability
    assert not np.array_equal(dropped, layer(inputs, training=True).numpy())  # fresh bits every call
    np.testing.assert_array_equal(layer(inputs, training=False).numpy(), inputs.numpy())
    assert isinstance(keras.layers.deserialize(keras.layers.serialize(layer)), Dropout)


OLD_MODELS = Path(__file__).parent / "fixtures" / "models_8c65714"  # saved by the code before the renames


@pytest.mark.parametrize("architecture", ARCHS)
def test_model_saved_before_the_renames_loads_and_predicts_the_same(architecture):
    loaded = keras.saving.load_model(OLD_MODELS / f"{architecture}.keras")
    data = np.load(OLD_MODELS / "inputs_and_logits.npz")
    logits = keras.ops.convert_to_numpy(loaded((data["features"], data["tokens"]), training=False))
    np.testing.assert_allclose(logits, data[f"logits_{architecture}"], rtol=1e-5, atol=1e-5)
    assert type(loaded.optimizer).__name__ == "FusedAdam" and loaded.optimizer.iterations.numpy() == 2
    assert loaded.loss is masked_sparse_categorical_crossentropy


def test_renamed_layers_keep_their_old_names_working():
    from training.models.components import (
        CachedMultiHeadAttention,
        LSTMAttentionDecoder,
        LSTMEncoder,
        MultiHeadCrossAttention,
    )

    assert issubclass(LSTMEncoder, LSTMAttentionDecoder) and MultiHeadCrossAttention is CachedMultiHeadAttention
    # Layer configs as the code before the renames serialized them (registered as training>LSTMEncoder, ...).
    old = json.loads((OLD_MODELS / "layer_configs.json").read_text())
    for old_name, cls in (("LSTMEncoder", LSTMEncoder), ("MultiHeadCrossAttention", CachedMultiHeadAttention)):
        layer = keras.saving.deserialize_keras_object(old[old_name])
        assert type(layer) is cls
        # ... and serialize under the same name, so a file saved now also loads in older code.
        assert keras.saving.serialize_keras_object(layer)["registered_name"] == f"training>{old_name}"


def test_dropout_gradient_is_its_mask_in_bfloat16():
    from training.models.components import Dropout

    layer = Dropout(0.1, seed=1, dtype="mixed_bfloat16")
    inputs = tf.cast(tf.random.stateless_normal([64, 300], seed=(1, 2)), "bfloat16")
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        dropped = layer(inputs, training=True)
    gradient = tape.gradient(dropped, inputs).numpy().astype("float32")
    assert dropped.dtype == tf.bfloat16
    kept = dropped.numpy().astype("float32") != 0
    np.testing.assert_array_equal(gradient != 0, kept)
    np.testing.assert_allclose(gradient[kept], 256 / 230, rtol=1e-2)  # 1 / keep probability, in bfloat16


# A packed row's logits against its captions one per row: tests/test_packed_rows.py.


def test_packed_rows_train_as_captions_one_per_row():
    # The same loss and gradients (dropout off) whether three captions share a row or have one each.
    model = tiny_model("transformer", dropout=0.0)
    rng = np.random.default_rng(2)
    features = rng.normal(size=(1, REGIONS, FEATURE_DIM)).astype("float32")
    captions = [[1, 2, 3, 4], [5, 6], [7, 8, 9]]
    flat = [t for c in captions for t in c]
    packed_inputs = (
        features,
        np.array([flat + [0]], "int32"),
        np.array([[p for c in captions for p in range(len(c))] + [0]], "int32"),
    )
    single = np.zeros((3, 4), "int32")
    for i, caption in enumerate(captions):
        single[i, : len(caption)] = caption

    def loss_and_gradients(inputs, targets):
        with tf.GradientTape() as tape:
            logits = model(inputs, training=True)
            per_token = keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)
            loss = tf.reduce_sum(per_token * tf.cast(targets > 0, "float32"))
        return loss, tape.gradient(loss, model.trainable_variables)

    targets_packed = np.array([[t % VOCAB + 1 for t in flat] + [0]], "int32")
    targets_single = np.where(single > 0, single % VOCAB + 1, 0).astype("int32")
    loss_packed, grads_packed = loss_and_gradients(packed_inputs, targets_packed)
    loss_single, grads_single = loss_and_gradients((np.repeat(features, 3, axis=0), single), targets_single)
    assert float(loss_packed) == pytest.approx(float(loss_single), rel=1e-5)
    for packed, single_grad in zip(grads_packed, grads_single):
        np.testing.assert_allclose(tf.convert_to_tensor(packed), tf.convert_to_tensor(single_grad), rtol=1e-4, atol=1e-6)


def test_gelu_is_keras_gelu():
    from training.models.components.decoders import gelu

    x = np.linspace(-6, 6, 2001, dtype="float32")
    np.testing.assert_allclose(gelu(x), keras.activations.gelu(x, approximate=False), rtol=1e-6, atol=1e-6)
    # In bfloat16 the two differ by at most one rounding of the result.
    ours = gelu(tf.cast(x, "bfloat16")).numpy().astype("float32")
    np.testing.assert_allclose(ours, keras.activations.gelu(x, approximate=False), rtol=2**-7, atol=2**-7)


def test_dense_matches_keras_dense_and_sums_its_bias_gradient_in_float32():
    from training.models.components import Dense

    rng = np.random.default_rng(3)
    inputs = tf.cast(rng.normal(0.3, 1.0, size=(13, 64, 32)), "bfloat16")  # a W1 batch's 832 tokens
    weights = [rng.normal(size=(32, 48)).astype("float32") * 0.1, np.full(48, 0.5, "float32")]
    ours, reference = Dense(48, dtype="mixed_bfloat16"), keras.layers.Dense(48, dtype="mixed_bfloat16")
    for layer in (ours, reference):
        layer.build(inputs.shape)
        layer.set_weights(weights)

    def forward_and_bias_gradient(layer):
        with tf.GradientTape() as tape:
            outputs = layer(inputs)
        return outputs, tape.gradient(outputs, layer.bias)

    outputs, gradient = forward_and_bias_gradient(ours)
    reference_outputs, reference_gradient = forward_and_bias_gradient(reference)
    np.testing.assert_array_equal(outputs.numpy(), reference_outputs.numpy())
    # d(sum of outputs)/d(bias) is the number of tokens, 832: exact in float32 and in bfloat16, but a sum of
    # ones in bfloat16 stops at 256 (256 + 1 rounds to 256), as TensorFlow's BiasAddGrad sums.
    np.testing.assert_array_equal(gradient.numpy(), np.full(48, 13 * 64, "float32"))


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_layer_normalization_matches_keras_in_values_and_gradients(dtype):
    from training.models.components import LayerNormalization

    rng = np.random.default_rng(4)
    inputs = tf.constant(rng.normal(1.0, 3.0, size=(5, 7, 32)).astype("float32"))
    upstream = tf.constant(rng.normal(size=(5, 7, 32)).astype("float32"))
    weights = [rng.uniform(0.5, 1.5, 32).astype("float32"), rng.normal(size=32).astype("float32")]
    results = []
    for layer in (LayerNormalization(epsilon=1e-5, dtype=dtype), keras.layers.LayerNormalization(epsilon=1e-5, dtype=dtype)):
        layer.build(inputs.shape)
        layer.set_weights(weights)
        x = tf.cast(inputs, layer.compute_dtype)
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs = layer(x)
            loss = tf.reduce_sum(tf.cast(outputs, "float32") * upstream)
        results.append([outputs, *tape.gradient(loss, [x, layer.gamma, layer.beta])])
    tolerance = 1e-5 if dtype == "float32" else 2**-7
    for ours, reference in zip(*results):
        assert ours.dtype == reference.dtype
        scale = np.abs(reference.numpy().astype("float32")).max()
        np.testing.assert_allclose(
            ours.numpy().astype("float32"), reference.numpy().astype("float32"), atol=tolerance * scale, rtol=0
        )
