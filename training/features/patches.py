"""Image -> feature grid without weights: fixed pixel patches, the demo's extractor.

A 64x64 image becomes an 8x8 grid of 8x8-pixel patches, each flattened to a 192-d
vector in [-1, 1]: (64 regions, 192 channels). It is a Keras model like the real
backbones, so it runs through the same tf.data pipeline, store and predict call.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

from training.features.base import BaseFeatureExtractor
from training.features.registry import register_extractor


@register_extractor("PatchGrid")
class PatchGridExtractor(BaseFeatureExtractor):
    NAME = "PatchGrid"
    PATCH_SIZE = 8
    FEATURE_DIM = PATCH_SIZE * PATCH_SIZE * 3
    DEFAULT_IMAGE_SIZE = (64, 64)
    MIN_IMAGE_SIZE = PATCH_SIZE

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
