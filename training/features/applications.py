"""Image -> feature grid with keras.applications backbones (EfficientNetB0-B7, InceptionV3, ResNet50, MobileNetV3).

Each extractor is the backbone without its classifier head: the output is the last
convolutional grid, e.g. EfficientNetB3 at 300 px -> 10x10x1536 -> 100 regions x 1536.
`weights="imagenet"` downloads the ImageNet weights on first use; a path loads a weights file
(offline machines: keras.applications' own file, WEIGHTS_FILE, copied or attached as a data set);
`weights=None` builds the same network randomly initialised (tests).
"""

from __future__ import annotations

from pathlib import Path

import keras
import tensorflow as tf

from training.configs.training_config import is_weights_file
from training.errors import UserInputError
from training.features.base import BaseFeatureExtractor
from training.features.registry import register_extractor


class KerasApplicationExtractor(BaseFeatureExtractor):
    """A keras.applications model with include_top=False; NAME names its constructor."""

    PREPROCESSING: str | None = None  # keras.applications module whose preprocess_input applies; None: model does it
    WEIGHTS_FILE: str = ""  # the name keras.applications gives the ImageNet weights without the classifier

    def build_model(self) -> keras.Model:
        build = getattr(keras.applications, self.NAME)
        if is_weights_file(self.weights):
            return self._build_from_file(build)
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

    def _build_from_file(self, build) -> keras.Model:
        """The backbone with the weights of the file at self.weights; a missing file or one of another
        network is a UserInputError naming the key."""
        path = Path(self.weights)
        if not path.is_file():
            raise UserInputError(
                f"'extractor_weights': file not found: {path} ({self.name} needs it: put it back, "
                f"or point extractor_weights at its new place)"
            )
        try:
            return build(include_top=False, weights=str(path), input_shape=(*self.image_size, 3))
        except (ValueError, OSError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UserInputError(
                f"'extractor_weights': {path} does not load into {self.name} ({reason}); use the "
                f"{self.name} weights without the classifier ({self.WEIGHTS_FILE})"
            ) from None

    def preprocess(self, images):
        images = tf.cast(images, tf.float32)
        if self.PREPROCESSING is None:
            return images
        return getattr(keras.applications, self.PREPROCESSING).preprocess_input(images)


# One class per backbone, registered under its keras.applications name. PREPROCESSING is the
# keras.applications module whose preprocess_input applies; None (the default) where the model rescales and
# normalises inside (EfficientNet, MobileNetV3), so its input stays in [0, 255]. WEIGHTS_FILE is the file
# keras.applications downloads for include_top=False (and caches in ~/.keras/models): what an offline machine
# is given, and what training.kaggle_utils looks for in the attached data sets.


@register_extractor("EfficientNetB0")
class EfficientNetB0Extractor(KerasApplicationExtractor):
    NAME, FEATURE_DIM, DEFAULT_IMAGE_SIZE = "EfficientNetB0", 1280, (224, 224)
    WEIGHTS_FILE = "efficientnetb0_notop.h5"


@register_extractor("EfficientNetB1")
class EfficientNetB1Extractor(KerasApplicationExtractor):
    NAME, FEATURE_DIM, DEFAULT_IMAGE_SIZE = "EfficientNetB1", 1280, (240, 240)
    WEIGHTS_FILE = "efficientnetb1_notop.h5"


@register_extractor("EfficientNetB2")
class EfficientNetB2Extractor(KerasApplicationExtractor):
    NAME, FEATURE_DIM, DEFAULT_IMAGE_SIZE = "EfficientNetB2", 1408, (260, 260)
    WEIGHTS_FILE = "efficientnetb2_notop.h5"


@register_extractor("EfficientNetB3")
class EfficientNetB3Extractor(KerasApplicationExtractor):
    NAME, FEATURE_DIM, DEFAULT_IMAGE_SIZE = "EfficientNetB3", 1536, (300, 300)
    WEIGHTS_FILE = "efficientnetb3_notop.h5"


@register_extractor("EfficientNetB4")
class EfficientNetB4Extractor(KerasApplicationExtractor):
    NAME, FEATURE_DIM, DEFAULT_IMAGE_SIZE = "EfficientNetB4", 1792, (380, 380)
    WEIGHTS_FILE = "efficientnetb4_notop.h5"


@register_extractor("EfficientNetB5")
class EfficientNetB5Extractor(KerasApplicationExtractor):
    NAME, FEATURE_DIM, DEFAULT_IMAGE_SIZE = "EfficientNetB5", 2048, (456, 456)
    WEIGHTS_FILE = "efficientnetb5_notop.h5"


@register_extractor("EfficientNetB6")
class EfficientNetB6Extractor(KerasApplicationExtractor):
    NAME, FEATURE_DIM, DEFAULT_IMAGE_SIZE = "EfficientNetB6", 2304, (528, 528)
    WEIGHTS_FILE = "efficientnetb6_notop.h5"


@register_extractor("EfficientNetB7")
class EfficientNetB7Extractor(KerasApplicationExtractor):
    NAME, FEATURE_DIM, DEFAULT_IMAGE_SIZE = "EfficientNetB7", 2560, (600, 600)
    WEIGHTS_FILE = "efficientnetb7_notop.h5"


@register_extractor("InceptionV3")
class InceptionV3Extractor(KerasApplicationExtractor):
    NAME, FEATURE_DIM, DEFAULT_IMAGE_SIZE = "InceptionV3", 2048, (299, 299)
    WEIGHTS_FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
    PREPROCESSING = "inception_v3"  # scales to [-1, 1]
    MIN_IMAGE_SIZE = 75


@register_extractor("ResNet50")
class ResNet50Extractor(KerasApplicationExtractor):
    NAME, FEATURE_DIM, DEFAULT_IMAGE_SIZE = "ResNet50", 2048, (224, 224)
    WEIGHTS_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    PREPROCESSING = "resnet50"  # RGB -> BGR minus the ImageNet channel means


@register_extractor("MobileNetV3Large")
class MobileNetV3LargeExtractor(KerasApplicationExtractor):
    NAME, FEATURE_DIM, DEFAULT_IMAGE_SIZE = "MobileNetV3Large", 960, (224, 224)
    WEIGHTS_FILE = "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5"


@register_extractor("MobileNetV3Small")
class MobileNetV3SmallExtractor(KerasApplicationExtractor):
    NAME, FEATURE_DIM, DEFAULT_IMAGE_SIZE = "MobileNetV3Small", 576, (224, 224)
    WEIGHTS_FILE = "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"
