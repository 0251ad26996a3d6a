"""Image -> feature grid without weights: fixed pixel patches (the demo's extractor), and ConvEncoder, a small
conv net on those patches that trains with the decoder.

A 64x64 image becomes an 8x8 grid of 8x8-pixel patches, each flattened to a 192-d
vector in [-1, 1]: (64 regions, 192 channels). It is a Keras model like the real
backbones, so it runs through the same tf.data pipeline, store and predict call.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import layers, ops

from training.features.base import BaseFeatureExtractor
from training.features.registry import register_extractor


@register_extractor("PatchGrid")
class PatchGridExtractor(BaseFeatureExtractor):
    NAME = "PatchGrid"
    PATCH_SIZE = 8
    FEATURE_DIM = PATCH_SIZE * PATCH_SIZE * 3
    DEFAULT_IMAGE_SIZE = (64, 64)
    MIN_IMAGE_SIZE = PATCH_SIZE
    STORES_PIXELS = True  # its features are the pixels, in [-1, 1]: the training batches can be augmented

    def __init__(self, image_size=None, weights=None, batch_size: int = 32):
        super().__init__(image_size=image_size, weights=None, batch_size=batch_size)
        # No weights exist, so `weights` (e.g. the config's "imagenet") is ignored and kept out of the fingerprint.
        if any(side % self.PATCH_SIZE for side in self.image_size):
            raise ValueError(
                f"PatchGrid: image_size {self.image_size} must be a multiple of {self.PATCH_SIZE} px on both sides; "
                "set model.image_size in the config (default (64, 64))"
            )

    def preprocess(self, images):
        return tf.cast(images, tf.float32) / 127.5 - 1.0

    def build_model(self) -> keras.Model:
        height, width = self.image_size
        patch = self.PATCH_SIZE
        rows, cols = height // patch, width // patch
        inputs = keras.Input((height, width, 3))
        # (H, W, 3) -> (rows, patch, cols, patch, 3) -> (rows, cols, patch, patch, 3) -> (rows, cols, patch*patch*3)
        x = layers.Reshape((rows, patch, cols, patch, 3))(inputs)
        x = layers.Permute((1, 3, 2, 4, 5))(x)
        outputs = layers.Reshape((rows, cols, patch * patch * 3))(x)
        return keras.Model(inputs, outputs, name="patch_grid")


@register_extractor("ConvEncoder")
class ConvEncoderExtractor(PatchGridExtractor):
    """PatchGrid's patches (the pixels, losslessly) as the stored features, and a small conv net trained from
    scratch with the decoder on top of them (`PatchConvEncoder`, inside the caption model): for images no
    pretrained backbone knows (synthetic scenes, medical or satellite images). The store is PatchGrid's, so a
    PatchGrid store serves it, and the pixels flow through tf.data where augmentation can reach them."""

    NAME = "ConvEncoder"

    def recipe(self) -> dict:
        return {**super().recipe(), "extractor": PatchGridExtractor.NAME}

    @classmethod
    def has_trainable_part(cls, model_config) -> bool:
        return True

    def trainable_encoder(self, model_config) -> keras.layers.Layer:
        grid = [side // self.PATCH_SIZE for side in self.image_size]
        return PatchConvEncoder(grid, self.PATCH_SIZE, list(model_config.encoder_filters), name="image_encoder")


@keras.saving.register_keras_serializable(package="training")
class PatchConvEncoder(keras.layers.Layer):
    """PatchGrid regions (B, rows * cols, patch * patch * 3) -> (B, rows * cols, filters[-1] + patch * patch * 3).

    The patches are put back into the image, then 3x3 conv blocks (conv, group norm, relu) run over it with a
    2x2 max pooling after each of the first log2(patch) blocks, so each output region sees its patch and
    its neighbours. Group norm rather than batch norm: a packed row is one image, batches are a dozen rows,
    and an image's features must not depend on the images it is batched with (decoding, the service).
    """

    def __init__(self, grid, patch_size: int = 8, filters=(64, 64, 128, 256), **kwargs):
        super().__init__(**kwargs)
        self.grid = tuple(int(g) for g in grid)
        self.patch_size = int(patch_size)
        self.filters = tuple(int(f) for f in filters)
        pools = self.patch_size.bit_length() - 1
        if 2**pools != self.patch_size:
            raise ValueError(f"PatchConvEncoder: patch_size must be a power of 2, got {patch_size}")
        self.convs = [layers.Conv2D(f, 3, padding="same", name=f"conv_{i}") for i, f in enumerate(self.filters)]
        self.norms = [layers.GroupNormalization(math.gcd(f, 8), name=f"norm_{i}") for i, f in enumerate(self.filters)]
        # Pool after each of the first `pools` blocks; with fewer blocks, the rest at the end.
        self.pool_after = [2 if i < pools else 1 for i in range(len(self.filters))]
        self.pool_after[-1] *= 2 ** max(0, pools - len(self.filters))

    def build(self, input_shape):
        shape = (None, self.grid[0] * self.patch_size, self.grid[1] * self.patch_size, 3)
        for conv, norm, pool in zip(self.convs, self.norms, self.pool_after):
            conv.build(shape)
            shape = (None, shape[1], shape[2], conv.filters)
            norm.build(shape)
            shape = (None, shape[1] // pool, shape[2] // pool, conv.filters)
        self.built = True

    def call(self, regions, training=None):
        rows, cols = self.grid
        patch = self.patch_size
        # The inverse of PatchGrid: (B, rows, cols, patch, patch, 3) -> (B, rows, patch, cols, patch, 3) -> image.
        x = ops.reshape(regions, (-1, rows, cols, patch, patch, 3))
        x = ops.reshape(ops.transpose(x, (0, 1, 3, 2, 4, 5)), (-1, rows * patch, cols * patch, 3))
        for conv, norm, pool in zip(self.convs, self.norms, self.pool_after):
            x = group_norm_relu(conv(x), norm)
            if pool > 1:
                x = ops.max_pool(x, pool, pool)
        # The patch's own pixels beside what the convolutions learned: the decoder starts from what PatchGrid gives
        # it while the convolutions, trained from scratch, catch up.
        return ops.concatenate([ops.reshape(x, (-1, rows * cols, self.filters[-1])), ops.cast(regions, x.dtype)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.grid[0] * self.grid[1], self.filters[-1] + self.patch_size**2 * 3)

    def get_config(self):
        config = super().get_config()
        config.update(grid=list(self.grid), patch_size=self.patch_size, filters=list(self.filters))
        return config


def group_norm_relu(x, norm: layers.GroupNormalization):
    """relu(norm(x)) for a channels-last `x` and a Keras GroupNormalization `norm`, computed from per-channel
    sums over the image rather than Keras' grouped moments: the same statistics (mean and biased variance per
    image and group, in float32), within float32 rounding. The encoder runs 1.7x faster forward with it
    (bench/decode.py's `image_encoder` seconds; the encoder is most of a ConvEncoder model's decoding time on
    a 2-core CPU); training epochs took as long as before. The variance as E[x^2] - E[x]^2 is exact enough
    here: it runs on conv outputs, whose mean is not thousands of times their spread."""
    dtype = x.dtype
    x = ops.cast(x, "float32")
    channels, groups = x.shape[-1], norm.groups
    per_group = channels // groups
    count = ops.cast(ops.shape(x)[1] * ops.shape(x)[2] * per_group, "float32")
    sums = ops.reshape(ops.sum(x, axis=(1, 2)), (-1, groups, per_group))
    squares = ops.reshape(ops.sum(ops.square(x), axis=(1, 2)), (-1, groups, per_group))
    mean = ops.sum(sums, axis=-1, keepdims=True) / count
    variance = ops.maximum(ops.sum(squares, axis=-1, keepdims=True) / count - ops.square(mean), 0.0)
    scale = ops.rsqrt(variance + norm.epsilon) * ops.reshape(ops.cast(norm.gamma, "float32"), (groups, per_group))
    shift = ops.reshape(ops.cast(norm.beta, "float32"), (groups, per_group)) - mean * scale
    normalized = x * ops.reshape(scale, (-1, 1, 1, channels)) + ops.reshape(shift, (-1, 1, 1, channels))
    return ops.cast(ops.relu(normalized), dtype)
