"""Decoding in padded batches: a batch of images is padded to the next of a few fixed sizes, each traced once.

Tracing a beam search costs about a second, while padding costs little: a decode step is a chain of
small ops, so 16 images take far less than 4 times what 4 do. An image's caption does not depend on
the images it is batched with; the last bits of its score and attention may depend on the padded size,
so every caller pads the same way: the Captioner, and the evaluator behind a run's scores.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# A batch is padded to the next of these (larger ones are split).
BATCH_SIZES = (1, 4, 16, 64)


def batch_sizes(largest: int) -> tuple[int, ...]:
    """The padded sizes up to `largest`: those of BATCH_SIZES below it, and itself."""
    return tuple(b for b in BATCH_SIZES if b < largest) + (int(largest),)


def decode_padded(decoder_of: Callable, features: np.ndarray, sizes=BATCH_SIZES) -> list:
    """Captions of one batch of at most max(sizes) images, padded with zeros to the next of `sizes`;
    `decoder_of(size)` is the decoder of that padded size."""
    count = len(features)
    if count == 0:
        return []
    padded = next(size for size in sizes if size >= count)
    if padded > count:
        features = np.concatenate([features, np.zeros((padded - count, *features.shape[1:]), features.dtype)])
    return decoder_of(padded).decode(features)[:count]


def decode_in_batches(decoder_of: Callable, features: np.ndarray, largest: int = BATCH_SIZES[-1]) -> list:
    """Captions of any number of images, `largest` at a time; after a full batch the last one is padded to
    `largest` too: that search is traced already."""
    sizes = batch_sizes(largest)
    captions = []
    for start in range(0, len(features), sizes[-1]):
        captions += decode_padded(decoder_of, features[start : start + sizes[-1]], sizes if start == 0 else sizes[-1:])
    return captions
