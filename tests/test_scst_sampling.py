"""The SCST sampler: it draws from the model's policy renormalised over the allowed words, and reads the weights once per batch."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from training.configs import ModelConfig
from training.data.tokenizer import Tokenizer
from training.evaluation.inference import CaptionSampler
from training.models import build_caption_model

WORDS = "a red blue green circle square triangle and of left right".split()


def tiny_model(max_length: int = 6):
    keras.utils.set_random_seed(0)
    tokenizer = Tokenizer(min_word_count=1).fit(["startseq " + " ".join(WORDS) + " endseq"])
    config = ModelConfig(feature_dim=12, embedding_dim=8, hidden_dim=16, num_layers=1, num_heads=2, ff_dim=16, dropout=0.0)
    return build_caption_model(config, tokenizer.vocab_size, max_length), tokenizer


@pytest.fixture
def mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    yield
    keras.mixed_precision.set_global_policy("float32")


def test_first_words_follow_the_policy_renormalised_over_the_allowed_words():
    model, tokenizer = tiny_model()
    samples = 4000
    sampler = CaptionSampler(model, tokenizer, samples=samples, max_length=1)
    features = tf.constant(np.random.default_rng(0).normal(size=(1, 5, 12)), tf.float32)
    first = sampler.sample(features, (3, 4))[:, 0]
    assert np.array_equal(first, sampler.sample(features, (3, 4))[:, 0])  # seeded
    logits, _, _ = model.decode_step(tf.constant([tokenizer.start_id]), 0, model.encode(features), model.init_cache(1))
    policy = tf.nn.softmax(logits[0] + sampler.banned_mask(tokenizer.vocab_size)).numpy()
    assert policy[[tokenizer.pad_id, tokenizer.start_id, tokenizer.unk_id]].sum() == 0
    frequencies = np.bincount(first, minlength=tokenizer.vocab_size) / samples
    # Every word within 4.5 standard errors of its probability; the banned ones never drawn.
    assert np.all(np.abs(frequencies - policy) <= 4.5 * np.sqrt(policy * (1 - policy) / samples) + 1e-12)
    assert np.count_nonzero(frequencies) > tokenizer.vocab_size // 2  # the test would see a wrong distribution


def test_the_weights_are_read_and_cast_once_per_batch_with_the_same_values(mixed_bfloat16):
    from training.utils.keras_private import read_variables_once

    model, tokenizer = tiny_model()
    assert model.compute_dtype == "bfloat16"
    features = tf.constant(np.random.default_rng(1).normal(size=(2, 5, 12)), tf.float32)

    @tf.function
    def step(once: bool):
        tokens = tf.fill([6], tokenizer.start_id)
        if not once:
            return model.decode_step(tokens, 0, model.encode(features), model.init_cache(6))[0]
        with read_variables_once(model.weights, model.compute_dtype):
            return model.decode_step(tokens, 0, model.encode(features), model.init_cache(6))[0]

    np.testing.assert_array_equal(step(True).numpy(), step(False).numpy())  # the cast Keras would make

    sampler = CaptionSampler(model, tokenizer, samples=3)
    graph = sampler._sample.get_concrete_function(tf.TensorSpec([2, 5, 12], tf.float32), tf.TensorSpec([2], tf.int64)).graph
    loop = [op for op in graph.get_operations() if op.type in ("While", "StatelessWhile")]
    assert len(loop) == 1
    body = graph._functions[loop[0].get_attr("body").name].definition
    reads = [node for node in body.node_def if node.op == "ReadVariableOp"]
    assert not reads, f"the sampling loop reads {len(reads)} variables at every step"
    assert any(node.op == "ReadVariableOp" for node in graph.as_graph_def().node)  # once, before the loop
    sequences = sampler.sample(features, (0, 1))
    assert sequences.shape == (6, 6) and np.array_equal(sequences, sampler.sample(features, (0, 1)))


def test_samples_never_pass_the_cap_and_the_default_cap_comes_from_the_training_captions():
    from training.configs import ConfigError, config_from_dict
    from training.trainers.scst import pack_samples, sample_length_cap

    # 95th percentile of the word counts (4) plus endseq; a set cap wins; never above the model's max_length.
    references = {f"img{i}": ["a red circle left"] * 19 + ([" ".join(WORDS * 2)] if i == 0 else []) for i in range(5)}
    assert sample_length_cap(references, max_length=30) == 5
    assert sample_length_cap(references, max_length=3) == 3
    assert sample_length_cap(references, max_length=30, configured=8) == 8
    assert sample_length_cap(references, max_length=30, configured=99) == 30
    with pytest.raises(ConfigError, match="'scst_max_length' must be >= 2"):
        config_from_dict({"scst_max_length": 1})

    model, tokenizer = tiny_model(max_length=6)
    sampler = CaptionSampler(model, tokenizer, samples=50, max_length=3)
    sequences = sampler.sample(np.random.default_rng(2).normal(size=(2, 5, 12)), (5, 6))
    lengths = np.count_nonzero(sequences, axis=1)
    assert sequences.shape == (100, 3) and lengths.max() == 3
    cut = np.flatnonzero((sequences != tokenizer.end_id).all(axis=1))  # rows the cap stopped before endseq
    assert cut.size and np.array_equal(sequences, sampler.sample(np.random.default_rng(2).normal(size=(2, 5, 12)), (5, 6)))
    # A cut sample is trained on its own words only: no endseq target is made up for it.
    _, targets, _, _ = pack_samples(sequences, np.ones(100, np.float32), 50, tokenizer.start_id)
    row, at = divmod(int(cut[0]), 50)
    begin = int(lengths[row * 50 : row * 50 + at].sum())
    assert np.array_equal(targets.numpy()[row, begin : begin + 3], sequences[cut[0]])
