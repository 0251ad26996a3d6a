"""DatasetBuilder on its invariants, through its public API: packing, bucketing, batch counts, truncation.

The packed-row layout is free to change; these tests read every batch back into captions and check
what must hold whatever the layout: each caption once and whole (or cut at max_length), rows and
batches within their limits, the declared batch count equal to the real one.
"""

from collections import Counter

import numpy as np
import pytest
import tensorflow as tf

from training.data.dataset import DatasetBuilder, pool_regions
from training.data.tokenizer import Tokenizer

WORDS = [f"w{i}" for i in range(12)]
IMAGES = 23
CHANNELS = 3


def make_captions(seed=0, images=IMAGES, longest=12):
    """Images with 1 to 7 captions of 1 to `longest` words (most have 5, as in Flickr8k)."""
    rng = np.random.default_rng(seed)
    captions = {}
    for i in range(images):
        count = 5 if i % 3 else int(rng.integers(1, 8))
        captions[f"img{i:02d}"] = [
            "startseq " + " ".join(rng.choice(WORDS, int(rng.integers(1, longest + 1)))) + " endseq" for _ in range(count)
        ]
    return captions


def make_builder(captions, max_length=20, **kwargs):
    """Image i's features are all i, so a batch's features tell which image each row is."""
    ids = sorted(captions)
    features = np.repeat(np.arange(len(ids), dtype=np.float16)[:, None, None], 2, axis=1)
    features = np.repeat(features, CHANNELS, axis=2)
    tokenizer = Tokenizer(min_word_count=1).fit(c for cs in captions.values() for c in cs)
    index = {image_id: i for i, image_id in enumerate(ids)}
    return DatasetBuilder(features, index, tokenizer, max_length, **kwargs), ids


def read_batches(dataset, ids):
    """Every batch as a list of rows; a row is (image id, [caption tokens, ...]), checked for the packed layout."""
    batches = []
    for (features, inputs, positions), targets in dataset:
        features, inputs, positions, targets = (t.numpy() for t in (features, inputs, positions, targets))
        assert inputs.shape == targets.shape == positions.shape
        rows = []
        for b in range(len(inputs)):
            real = int(np.count_nonzero(inputs[b]))
            # Padding only at the end, and masked in every input.
            assert not inputs[b, real:].any() and not targets[b, real:].any() and not positions[b, real:].any()
            assert np.all(features[b] == features[b, 0, 0])
            starts = np.flatnonzero(positions[b, :real] == 0)
            assert len(starts) and starts[0] == 0
            captions = []
            for start, end in zip(starts, list(starts[1:]) + [real]):
                caption_inputs, caption_targets = inputs[b, start:end], targets[b, start:end]
                # Teacher forcing within one caption: each target is the next input; positions count from 0.
                np.testing.assert_array_equal(caption_inputs[1:], caption_targets[:-1])
                np.testing.assert_array_equal(positions[b, start:end], np.arange(end - start))
                captions.append((int(caption_inputs[0]), *map(int, caption_targets)))
            rows.append((ids[int(features[b, 0, 0])], captions))
        batches.append(rows)
    return batches


def captions_of(batches):
    return Counter((image_id, tokens) for rows in batches for image_id, captions in rows for tokens in captions)


def expected_captions(builder, captions):
    """Every caption tokenized whole; the truncation of long ones is checked separately."""
    return Counter(
        (image_id, tuple(tokens))
        for image_id, texts in captions.items()
        for tokens in builder.tokenizer.texts_to_sequences(texts)
    )


@pytest.mark.parametrize("batch_size,bucket_width", [(16, 4), (64, 4), (5, 2), (16, None), (1, 4)])
def test_every_caption_once_and_whole_in_rows_and_batches_within_limits(batch_size, bucket_width):
    captions = make_captions()
    builder, ids = make_builder(captions, batch_size=batch_size, bucket_width=bucket_width, seed=3)
    per_row, rows_per_batch = builder.captions_per_row(captions), builder.rows_per_batch(captions)
    assert per_row == min(5, batch_size)  # the most common number of captions per image, at most a batch
    for dataset in (builder.build(captions, training=False), builder.build(captions, training=True)):
        batches = read_batches(dataset, ids)
        assert len(batches) == builder.steps(captions)  # the declared batch count is the real one
        assert captions_of(batches) == expected_captions(builder, captions)  # each caption once, whole
        # Packed: a row holds several captions of its image whenever a row may.
        assert any(len(row_captions) > 1 for rows in batches for _, row_captions in rows) == (per_row > 1)
        for rows in batches:
            assert 1 <= len(rows) <= rows_per_batch
            assert all(1 <= len(row_captions) <= per_row for _, row_captions in rows)
            if bucket_width:  # bucketed: a batch's rows are about as long as each other
                lengths = [sum(len(c) - 1 for c in row_captions) for _, row_captions in rows]
                assert max(lengths) - min(lengths) < bucket_width


def test_seeded_epochs_each_hold_every_caption_once_and_repeat_on_resume():
    captions = make_captions(seed=1)
    builder, ids = make_builder(captions, batch_size=16, seed=5)
    steps = builder.steps(captions)
    stream = read_batches(builder.build(captions, first_epoch=0).take(3 * steps), ids)
    epochs = [stream[e * steps : (e + 1) * steps] for e in range(3)]
    for epoch in epochs:
        assert captions_of(epoch) == expected_captions(builder, captions)
    assert epochs[0] != epochs[1]  # reshuffled each epoch
    # A run resumed at epoch 2 in a new builder sees the very batches of the uninterrupted run.
    resumed, _ = make_builder(captions, batch_size=16, seed=5)
    assert read_batches(resumed.build(captions, first_epoch=2).take(steps), ids) == epochs[2]


def test_captions_over_max_length_are_cut_and_end_with_endseq():
    captions = make_captions(seed=2, longest=12)
    max_length = 6  # targets per caption: up to 5 words and endseq, as CaptionModel.max_length counts
    builder, ids = make_builder(captions, max_length=max_length, batch_size=16)
    tokenizer = builder.tokenizer
    batches = read_batches(builder.build(captions, training=False), ids)
    assert len(batches) == builder.steps(captions)
    got = captions_of(batches)
    expected = Counter()
    for (image_id, tokens), count in expected_captions(builder, captions).items():
        if len(tokens) - 1 > max_length:
            tokens = tokens[:max_length] + (tokenizer.end_id,)
        expected[(image_id, tokens)] += count
    assert got == expected
    cut = [tokens for _, tokens in got if len(tokens) - 1 == max_length]
    assert cut and all(tokens[0] == tokenizer.start_id and tokens[-1] == tokenizer.end_id for _, tokens in got)
    assert max(len(tokens) - 1 for _, tokens in got) == max_length
    assert sum(len(c.split()) - 1 > max_length for texts in captions.values() for c in texts) > 0  # some were cut
    with pytest.raises(ValueError, match="max_length"):
        make_builder(captions, max_length=0)


def test_image_features_in_order_and_pooled_features_are_the_mean_over_regions():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(4, 5, CHANNELS)).astype(np.float16)
    index = {"a": 0, "b": 1, "c": 2, "d": 3}
    tokenizer = Tokenizer(min_word_count=1).fit(["startseq w1 endseq"])
    builder = DatasetBuilder(features, index, tokenizer, 4)
    got = builder.image_features(["c", "a", "c"])
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, features[[2, 0, 2]])

    pooled = DatasetBuilder(features, index, tokenizer, 4, pooled=True)
    assert pooled.feature_shape == (1, CHANNELS)
    np.testing.assert_allclose(pooled.image_features(["b", "d"])[:, 0], features[[1, 3]].astype(np.float32).mean(1), rtol=1e-6)
    # The same vectors as the pooling the Captioner applies to an image's grid.
    np.testing.assert_array_equal(pooled.image_features(["b"]), pool_regions(features[[1]]).numpy())
    (batch, _, _), _ = next(iter(pooled.build({"b": ["startseq w1 endseq"]}, training=False)))
    assert batch.dtype == tf.float32 and batch.shape == (1, 1, CHANNELS)
