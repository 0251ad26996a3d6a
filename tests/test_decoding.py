"""Decoding: greedy and beam search against hand-built and tiny random models implementing the decode protocol."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import keras
import numpy as np
import pytest
import tensorflow as tf

from training.evaluation.inference import BeamSearchDecoder, Caption, GreedyDecoder, length_penalty

PAD, START, END, UNK = 0, 1, 2, 3


@dataclass
class TinyTokenizer:
    """Stand-in for training.data.tokenizer.Tokenizer: only the attributes the decoders use."""

    words: list[str]
    pad_id: int = PAD
    start_id: int = START
    end_id: int = END
    unk_id: int = UNK
    index_word: dict[int, str] = field(init=False)

    def __post_init__(self):
        self.index_word = dict(enumerate(["<pad>", "startseq", "endseq", "<unk>", *self.words]))

    @property
    def vocab_size(self) -> int:
        return len(self.index_word)

    def sequences_to_texts(self, seqs, strip_special=True):
        special = {self.pad_id, self.start_id, self.end_id} if strip_special else set()
        return [" ".join(self.index_word[int(t)] for t in seq if int(t) not in special) for seq in seqs]


class BigramModel:
    """P(next token | previous token) from a fixed table; counts its decode_step calls."""

    def __init__(self, probabilities: np.ndarray, max_length: int, regions: int = 3):
        with np.errstate(divide="ignore"):
            self.log_table = tf.constant(np.log(probabilities), tf.float32)
        self.max_length, self.regions = max_length, regions
        self.calls = tf.Variable(0)

    def encode(self, image_features):
        return (image_features,)

    def init_cache(self, batch_size):
        return {"previous": tf.zeros([batch_size], tf.int32)}

    def decode_step(self, tokens, step, memory, cache):
        self.calls.assign_add(1)
        attention = tf.fill([tf.shape(tokens)[0], self.regions], 1.0 / self.regions)
        return tf.gather(self.log_table, tokens), {"previous": tokens}, attention


class TinyRecurrentModel:
    """A random recurrent captioner with dot-product attention over regions, a few units wide."""

    def __init__(self, vocab_size, channels, units=8, max_length=12, seed=0, special_bias=0.0, end_per_step=0.0):
        keras.utils.set_random_seed(seed)
        self.max_length = max_length
        wide = keras.initializers.RandomNormal(stddev=1.5)  # large random weights: varied, input-dependent captions
        self.project = keras.layers.Dense(units)
        self.embed = keras.layers.Embedding(vocab_size, units, embeddings_initializer=wide)
        self.recur = keras.layers.Dense(units, activation="tanh", kernel_initializer=wide)
        self.out = keras.layers.Dense(vocab_size, kernel_initializer=wide)
        # endseq grows likelier with every step, as in a trained captioner, so captions end at varied lengths.
        self.end_per_step = tf.one_hot(END, vocab_size) * end_per_step
        memory = self.encode(tf.zeros([1, 2, channels]))  # build every layer eagerly, outside any tf.function
        self.decode_step(tf.zeros([1], tf.int32), tf.constant(0), memory, self.init_cache(1))
        bias = self.out.bias.numpy()
        bias[[PAD, START, UNK]] += special_bias  # tempt the decoder with tokens it must never emit
        self.out.bias.assign(bias)

    def encode(self, image_features):
        return {"regions": self.project(image_features)}

    def init_cache(self, batch_size):
        return [tf.zeros([batch_size, self.recur.units])]

    def decode_step(self, tokens, step, memory, cache):
        hidden = self.recur(tf.concat([self.embed(tokens), cache[0]], axis=-1))
        regions = memory["regions"]  # one image per k consecutive rows of `tokens`
        grouped = tf.reshape(hidden, [tf.shape(regions)[0], -1, self.recur.units])
        attention = tf.nn.softmax(tf.einsum("brc,bkc->bkr", regions, grouped))
        context = tf.reshape(tf.einsum("bkr,brc->bkc", attention, regions), tf.shape(hidden))
        attention = tf.reshape(attention, [-1, tf.shape(regions)[1]])
        logits = self.out(tf.concat([hidden, context], axis=-1)) + tf.cast(step, tf.float32) * self.end_per_step
        return logits, [hidden], attention


def greedy_trap() -> np.ndarray:
    """Greedy takes "a" (0.5) then "a c" ends at 0.2; the best caption is "b d" at 0.4 * 0.9 = 0.36."""
    a, b, c, d = 4, 5, 6, 7
    table = np.zeros((8, 8))
    table[:, END] = 1.0  # rows of tokens that are never fed
    table[START] = 0
    table[START, [a, b, c]] = [0.5, 0.4, 0.1]
    table[a] = 0
    table[a, [c, d, b]] = [0.4, 0.3, 0.3]
    table[b] = 0
    table[b, [d, c]] = [0.9, 0.1]
    return table


def reference_greedy(model, tokenizer, features, steps):
    """Plain eager greedy decoding, one step at a time, to check the compiled decoders against."""
    memory, cache = model.encode(tf.constant(features)), model.init_cache(len(features))
    tokens = np.full(len(features), tokenizer.start_id, np.int32)
    captions, done = [[] for _ in features], np.zeros(len(features), bool)
    for step in range(steps):
        logits, cache, _ = model.decode_step(tf.constant(tokens), tf.constant(step), memory, cache)
        log_probs = tf.nn.log_softmax(logits).numpy()
        log_probs[:, [tokenizer.pad_id, tokenizer.start_id, tokenizer.unk_id]] = -np.inf
        tokens = log_probs.argmax(axis=1).astype(np.int32)
        for i in np.flatnonzero(~done):
            done[i] = tokens[i] == tokenizer.end_id
            if not done[i]:
                captions[i].append(int(tokens[i]))
        if done.all():
            break
    return captions


@pytest.fixture(scope="module")
def tokenizer():
    return TinyTokenizer(words=[f"w{i}" for i in range(16)])


@pytest.fixture(scope="module")
def features():
    return np.random.default_rng(0).normal(size=(7, 5, 6)).astype(np.float32)


def test_beam_search_finds_the_best_caption_greedy_misses():
    tokenizer = TinyTokenizer(words=["a", "b", "c", "d"])
    model = BigramModel(greedy_trap(), max_length=10)
    features = np.zeros((2, 3, 4), np.float32)

    greedy = GreedyDecoder(model, tokenizer).decode(features)
    assert [c.text for c in greedy] == ["a c", "a c"]
    assert greedy[0].score == pytest.approx(np.log(0.5 * 0.4 * 1.0), abs=1e-5)

    model.calls.assign(0)
    beam = BeamSearchDecoder(model, tokenizer, beam_size=2).decode(features)
    assert [c.tokens for c in beam] == [[5, 7], [5, 7]] and beam[0].text == "b d"
    assert beam[0].score == pytest.approx(np.log(0.4 * 0.9 * 1.0), abs=1e-5)  # endseq's log-prob counts
    assert beam[0].attention.shape == (2, 3)
    # One model call per step for the whole batch, and the loop stops once every caption has ended.
    assert int(model.calls.numpy()) == 3


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_exhaustive_beam_equals_brute_force_with_length_penalty(alpha):
    rng = np.random.default_rng(1)
    tokenizer = TinyTokenizer(words=["a", "b", "c"])
    table = rng.dirichlet(np.ones(7) * 0.7, size=7)  # mass on pad/start/unk too: masked, not renormalised
    steps = 3
    model = BigramModel(table, max_length=steps)
    # With more hypotheses than there are captions of <= 3 tokens, beam search is exhaustive.
    found = BeamSearchDecoder(model, tokenizer, beam_size=100, length_penalty=alpha).decode(np.zeros((1, 3, 2)))[0]

    def score(sequence):
        log_prob = sum(np.log(table[prev, nxt]) for prev, nxt in zip((START, *sequence), sequence))
        return log_prob, log_prob / float(length_penalty(len(sequence), alpha))

    words = [4, 5, 6]
    candidates = [(*seq, END) for n in range(steps) for seq in itertools.product(words, repeat=n)]
    candidates += list(itertools.product(words, repeat=steps))  # unfinished at max_length: returned truncated
    best = max(candidates, key=lambda seq: score(seq)[1])
    assert found.tokens == [t for t in best if t != END]
    assert found.score == pytest.approx(score(best)[0], abs=1e-5)
    assert found.normalized_score == pytest.approx(score(best)[1], abs=1e-5)


def test_greedy_and_beam_of_one_match_plain_greedy(tokenizer, features):
    model = TinyRecurrentModel(tokenizer.vocab_size, channels=6, seed=7, end_per_step=0.3)
    expected = reference_greedy(model, tokenizer, features, model.max_length)
    assert {len(t) == model.max_length for t in expected} == {True, False}  # some truncated, some ended
    greedy = GreedyDecoder(model, tokenizer).decode(features)
    beam_one = BeamSearchDecoder(model, tokenizer, beam_size=1).decode(features)
    assert [c.tokens for c in greedy] == expected
    assert [c.tokens for c in beam_one] == expected
    np.testing.assert_allclose([c.score for c in beam_one], [c.score for c in greedy], rtol=1e-6)
    assert all(isinstance(c, Caption) and c.attention.shape == (len(c.tokens), 5) for c in greedy)
    np.testing.assert_allclose([c.attention.sum(axis=1) for c in greedy[:1]][0], 1.0, rtol=1e-5)


def test_batched_decoding_equals_one_image_at_a_time(tokenizer, features):
    model = TinyRecurrentModel(tokenizer.vocab_size, channels=6, seed=4, end_per_step=0.5)
    decoder = BeamSearchDecoder(model, tokenizer, beam_size=3, length_penalty=0.6, batch_size=3)  # batches 3, 3, 1
    batched, alone = decoder.decode(features), decoder.decode_one_at_a_time(features)
    assert [c.tokens for c in batched] == [c.tokens for c in alone]
    np.testing.assert_allclose([c.score for c in batched], [c.score for c in alone], rtol=1e-5)
    assert [c.text for c in batched] == tokenizer.sequences_to_texts([c.tokens for c in alone])


@pytest.mark.parametrize("beam_size", [1, 3])
def test_captions_never_hold_special_tokens_and_respect_max_length(tokenizer, features, beam_size):
    # Padding, start and unk are the model's favourites and endseq never wins: every caption runs to max_length.
    model = TinyRecurrentModel(tokenizer.vocab_size, channels=6, seed=5, special_bias=8.0, end_per_step=-2.0)
    captions = BeamSearchDecoder(model, tokenizer, beam_size=beam_size, max_length=5).decode(features)
    for caption in captions:
        assert len(caption.tokens) == 5 and caption.attention.shape == (5, 5)
        assert not {PAD, START, END, UNK} & set(caption.tokens)
        assert not {"<pad>", "startseq", "endseq", "<unk>"} & set(caption.text.split())


def test_max_length_beyond_the_model_is_refused(tokenizer):
    model = BigramModel(greedy_trap(), max_length=4)
    with pytest.raises(ValueError, match="max_length"):
        GreedyDecoder(model, tokenizer, max_length=5)
    with pytest.raises(ValueError, match="image_features"):
        GreedyDecoder(model, tokenizer).decode(np.zeros((3, 4)))


def test_large_batches_split_across_cores_decode_like_single_images(tokenizer):
    # 70 images in one batch run as one search per core; each image must come out as if alone.
    many = np.random.default_rng(7).normal(size=(70, 4, 6)).astype(np.float32)
    model = TinyRecurrentModel(tokenizer.vocab_size, channels=6, seed=4, end_per_step=0.5)
    decoder = BeamSearchDecoder(model, tokenizer, beam_size=3, length_penalty=0.6, batch_size=70)
    batched, alone = decoder.decode(many), decoder.decode_one_at_a_time(many[:10])
    assert [c.tokens for c in batched[:10]] == [c.tokens for c in alone]
    greedy = GreedyDecoder(model, tokenizer, batch_size=70).decode(many)
    assert [c.tokens for c in greedy] == reference_greedy(model, tokenizer, many, model.max_length)


class RowCountingModel(TinyRecurrentModel):
    """TinyRecurrentModel that records how many rows each decode step was given."""

    def __init__(self, *args, **kwargs):
        self.rows_at_step = tf.Variable(tf.zeros([12], tf.int32))  # max_length steps
        super().__init__(*args, **kwargs)

    def decode_step(self, tokens, step, memory, cache):
        self.rows_at_step.scatter_nd_update([[step]], [tf.shape(tokens)[0]])
        return super().decode_step(tokens, step, memory, cache)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_images_leave_the_batch_when_their_search_is_over(tokenizer, beam_size):
    many = np.random.default_rng(3).normal(size=(24, 4, 6)).astype(np.float32)
    model = RowCountingModel(tokenizer.vocab_size, channels=6, seed=4, end_per_step=0.5)
    decoder = BeamSearchDecoder(model, tokenizer, beam_size=beam_size, length_penalty=0.6, batch_size=24)
    batched = decoder.decode(many)
    rows = model.rows_at_step.numpy()
    taken = int((rows > 0).sum())
    # The batch shrinks, in groups, as images finish, down to the images of the longest search.
    assert rows[0] == 24 * beam_size and 0 < rows[taken - 1] < rows[0] and (np.diff(rows[:taken]) <= 0).all()
    assert len(set(rows[:taken])) > 2
    alone = decoder.decode_one_at_a_time(many)
    assert [c.tokens for c in batched] == [c.tokens for c in alone]
    assert len({len(c.tokens) for c in batched}) > 2  # captions of varied lengths
    # float32 of another batch size rounds differently (seen: 2e-5 relative on a CPU without bfloat16); a row mixed
    # up with another image's would differ by far more.
    np.testing.assert_allclose([c.score for c in batched], [c.score for c in alone], rtol=1e-4)
    np.testing.assert_allclose([c.normalized_score for c in batched], [c.normalized_score for c in alone], rtol=1e-4)
    for b, a in zip(batched, alone):
        np.testing.assert_allclose(b.attention, a.attention, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("architecture", ["transformer", "lstm_attention"])
@pytest.mark.parametrize("beam_size", [1, 3])
def test_caption_models_decode_batches_and_single_images_alike(tokenizer, features, architecture, beam_size):
    # The real models, through the decoders' loop: an image alone (batch of 1) and in batches of 3, 3, 1.
    from training.configs import ModelConfig
    from training.models import build_caption_model

    keras.utils.set_random_seed(3)
    config = ModelConfig(
        architecture=architecture, feature_dim=6, embedding_dim=5, hidden_dim=8, num_layers=2, num_heads=2, ff_dim=16, dropout=0.0
    )
    model = build_caption_model(config, tokenizer.vocab_size, max_length=6)
    decoder = BeamSearchDecoder(model, tokenizer, beam_size=beam_size, batch_size=3)
    batched, alone = decoder.decode(features), decoder.decode_one_at_a_time(features)
    assert [c.tokens for c in batched] == [c.tokens for c in alone]
    np.testing.assert_allclose([c.score for c in batched], [c.score for c in alone], rtol=1e-4)
    assert all(c.attention.shape == (len(c.tokens), features.shape[1]) for c in batched)


def teacher_forced(model, image_features, tokens):
    """The model's own log-probability of `tokens` after startseq, and each step's attention, one step at a time."""
    memory, cache = model.encode(tf.constant(image_features[None])), model.init_cache(1)
    total, attention, previous = 0.0, [], START
    for step, token in enumerate(tokens):
        logits, cache, weights = model.decode_step(tf.constant([previous]), tf.constant(step), memory, cache)
        total += float(tf.nn.log_softmax(logits)[0, token])
        attention.append(weights[0].numpy())
        previous = token
    return total, np.array(attention)


def test_alternatives_are_the_beams_other_hypotheses_scored_as_the_model_scores_them(tokenizer):
    many = np.random.default_rng(5).normal(size=(12, 4, 6)).astype(np.float32)
    model = TinyRecurrentModel(tokenizer.vocab_size, channels=6, seed=4, end_per_step=0.5)
    plain = BeamSearchDecoder(model, tokenizer, beam_size=4, length_penalty=0.6, batch_size=12).decode(many)
    # A batch of 12: images leave the search as they finish, so rows of every step are read back.
    found = BeamSearchDecoder(model, tokenizer, beam_size=4, length_penalty=0.6, batch_size=12, alternatives=True).decode(many)
    assert [c.tokens for c in found] == [c.tokens for c in plain] and all(c.alternatives is None for c in plain)
    np.testing.assert_allclose([c.score for c in found], [c.score for c in plain], rtol=1e-5)
    assert {len(c.alternatives) for c in found} == {3}
    assert {a.finished for c in found for a in c.alternatives} == {True, False}  # the search leaves some behind
    for image, best in zip(many, found):
        hypotheses = [best, *best.alternatives]
        assert len({(tuple(h.tokens), h.finished) for h in hypotheses}) == 4
        ranked = [h.normalized_score for h in hypotheses]
        assert ranked == sorted(ranked, reverse=True)
        for hypothesis in hypotheses:
            log_prob, attention = teacher_forced(model, image, hypothesis.tokens + [END] * hypothesis.finished)
            assert hypothesis.score == pytest.approx(log_prob, abs=1e-4)
            np.testing.assert_allclose(hypothesis.attention, attention[: len(hypothesis.tokens)], atol=1e-4)
            assert hypothesis.text == tokenizer.sequences_to_texts([hypothesis.tokens])[0]
