"""Image -> feature grid with keras.applications backbones (EfficientNetB0-B7, InceptionV3, ResNet50, MobileNetV3).

Each extractor is the backbone without its classifier head: the output is the last
convolutional grid, e.g. EfficientNetB3 at 300 px -> 10x10x1536 -> 100 regions x 1536.
`weights="imagenet"` downloads the ImageNet weights on first use; `weights=None` builds
the same network randomly initialised (tests, offline machines).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from training.features.base import BaseFeatureExtractor
from training.features.registry import register_extractor


class KerasApplicationExtractor(BaseFeatureExtractor):
    """A keras.applications model with include_top=False; APPLICATION names its constructor."""

    APPLICATION: str = ""
    PREPROCESSING: str | None = None  # keras.applications module whose preprocess_input applies; None: model does it

    def build_model(self) -> keras.Model:
        build = getattr(keras.applications, self.APPLICATION)
        try:
            return build(include_top=False, weights=self.weights, input_shape=(*self.image_size, 3))
        except Exception as error:  # keras raises a bare Exception when the download fails
            if self.weights != "imagenet" or "URL fetch failure" not in str(error):
                raise
            raise RuntimeError(
                f"{self.name}: could not download the ImageNet weights ({error}). Connect to the internet once "
                "(keras caches them in ~/.keras/models), or copy the file named above into ~/.keras/models; "
                "extractor_weights: null runs with random weights, which gives near-useless features"
            ) from error

    def preprocess(self, images):
        images = tf.cast(images, tf.float32)
        if self.PREPROCESSING is None:
            return images
        return getattr(keras.applications, self.PREPROCESSING).preprocess_input(images)


# EfficientNet and MobileNetV3 rescale and normalise inside the model, so their input stays in [0, 255].
@register_extractor("EfficientNetB0")
class EfficientNetB0Extractor(KerasApplicationExtractor):
    NAME, APPLICATION, FEATURE_DIM, DEFAULT_IMAGE_SIZE = "EfficientNetB0", "EfficientNetB0", 1280, (224, 224)


@register_extractor("EfficientNetB1")
class EfficientNetB1Extractor(KerasApplicationExtractor):
    NAME, APPLICATION, FEATURE_DIM, DEFAULT_IMAGE_SIZE = "EfficientNetB1", "EfficientNetB1", 1280, (240, 240)


@register_extractor("EfficientNetB2")
class EfficientNetB2Extractor(KerasApplicationExtractor):
    NAME, APPLICATION, FEATURE_DIM, DEFAULT_IMAGE_SIZE = "EfficientNetB2", "EfficientNetB2", 1408, (260, 260)


@register_extractor("EfficientNetB3")
class EfficientNetB3Extractor(KerasApplicationExtractor):
    NAME, APPLICATION, FEATURE_DIM, DEFAULT_IMAGE_SIZE = "EfficientNetB3", "EfficientNetB3", 1536, (300, 300)


@register_extractor("EfficientNetB4")
class EfficientNetB4Extractor(KerasApplicationExtractor):
    NAME, APPLICATION, FEATURE_DIM, DEFAULT_IMAGE_SIZE = "EfficientNetB4", "EfficientNetB4", 1792, (380, 380)


@register_extractor("EfficientNetB5")
class EfficientNetB5Extractor(KerasApplicationExtractor):
    NAME, APPLICATION, FEATURE_DIM, DEFAULT_IMAGE_SIZE = "EfficientNetB5", "EfficientNetB5", 2048, (456, 456)


@register_extractor("EfficientNetB6")
class EfficientNetB6Extractor(KerasApplicationExtractor):
    NAME, APPLICATION, FEATURE_DIM, DEFAULT_IMAGE_SIZE = "EfficientNetB6", "EfficientNetB6", 2304, (528, 528)


@register_extractor("EfficientNetB7")
class EfficientNetB7Extractor(KerasApplicationExtractor):
    NAME, APPLICATION, FEATURE_DIM, DEFAULT_IMAGE_SIZE = "EfficientNetB7", "EfficientNetB7", 2560, (600, 600)


@register_extractor("InceptionV3")
class InceptionV3Extractor(KerasApplicationExtractor):
    NAME, APPLICATION, FEATURE_DIM, DEFAULT_IMAGE_SIZE = "InceptionV3", "InceptionV3", 2048, (299, 299)
    PREPROCESSING = "inception_v3"  # scales to [-1, 1]
    MIN_IMAGE_SIZE = 75


@register_extractor("ResNet50")
class ResNet50Extractor(KerasApplicationExtractor):
    NAME, APPLICATION, FEATURE_DIM, DEFAULT_IMAGE_SIZE = "ResNet50", "ResNet50", 2048, (224, 224)
    PREPROCESSING = "resnet50"  # RGB -> BGR minus the ImageNet channel means ("caffe" mode)


@register_extractor("MobileNetV3Large")
class MobileNetV3LargeExtractor(KerasApplicationExtractor):
    NAME, APPLICATION, FEATURE_DIM, DEFAULT_IMAGE_SIZE = "MobileNetV3Large", "MobileNetV3Large", 960, (224, 224)


@register_extractor("MobileNetV3Small")
class MobileNetV3SmallExtractor(KerasApplicationExtractor):
    NAME, APPLICATION, FEATURE_DIM, DEFAULT_IMAGE_SIZE = "MobileNetV3Small", "MobileNetV3Small", 576, (224, 224)
