"""A row that packs several captions of one image gives each caption the logits it gets alone in its own row.

What keeps packed captions apart: the Transformer's attention mask (a caption sees only its own
tokens) and the LSTM's state reset where a caption starts (position 0). Both through the public model API.
"""

import keras
import numpy as np
import pytest
from test_models import FEATURE_DIM, tiny_config

from training.models import build_caption_model

VOCAB, MAX_LEN, REGIONS = 20, 16, 4
# Caption inputs (startseq = 2, then words); rows 0 and 1 pack three and two of them.
ROWS = [[[2, 5, 6, 7], [2, 8], [2, 9, 10, 11, 12, 13]], [[2, 14, 15], [2, 5, 5, 16, 17]]]


def packed(rows, width):
    tokens, positions = np.zeros((len(rows), width), np.int32), np.zeros((len(rows), width), np.int32)
    for b, captions in enumerate(rows):
        flat = [t for caption in captions for t in caption]
        tokens[b, : len(flat)] = flat
        positions[b, : len(flat)] = [p for caption in captions for p in range(len(caption))]
    return tokens, positions


@pytest.mark.parametrize("architecture", ["transformer", "lstm_attention"])
def test_packed_row_gives_the_logits_of_its_captions_one_per_row(architecture):
    config = tiny_config(architecture)
    keras.utils.set_random_seed(0)
    model = build_caption_model(config, VOCAB, MAX_LEN)
    features = np.random.default_rng(0).normal(size=(len(ROWS), REGIONS, FEATURE_DIM)).astype("float32")
    tokens, positions = packed(ROWS, width=MAX_LEN)  # padded past the last caption
    logits = np.asarray(model((features, tokens, positions), training=False))

    unpacked_differs = []
    as_one_caption = np.asarray(model((features, tokens), training=False))  # the same row without positions
    for b, captions in enumerate(ROWS):
        start = 0
        for i, caption in enumerate(captions):
            alone = np.asarray(model((features[b : b + 1], np.array([caption], np.int32)), training=False))[0]
            span = slice(start, start + len(caption))
            np.testing.assert_allclose(logits[b, span], alone, rtol=1e-5, atol=1e-5)
            if i:
                unpacked_differs.append(not np.allclose(as_one_caption[b, span], alone, atol=1e-3))
            start += len(caption)
    # Without positions the later captions read the earlier ones: the test can tell apart what it checks.
    assert all(unpacked_differs)
