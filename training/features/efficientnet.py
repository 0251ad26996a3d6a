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


# One row per backbone: (name, keras.applications constructor, preprocessing module, feature size,
# default image size, smallest image side). The preprocessing module is the keras.applications module whose
# preprocess_input applies; None where the model rescales and normalises inside (EfficientNet, MobileNetV3),
# so its input stays in [0, 255].
BACKBONES = [
    ("EfficientNetB0", "EfficientNetB0", None, 1280, (224, 224), 32),
    ("EfficientNetB1", "EfficientNetB1", None, 1280, (240, 240), 32),
    ("EfficientNetB2", "EfficientNetB2", None, 1408, (260, 260), 32),
    ("EfficientNetB3", "EfficientNetB3", None, 1536, (300, 300), 32),
    ("EfficientNetB4", "EfficientNetB4", None, 1792, (380, 380), 32),
    ("EfficientNetB5", "EfficientNetB5", None, 2048, (456, 456), 32),
    ("EfficientNetB6", "EfficientNetB6", None, 2304, (528, 528), 32),
    ("EfficientNetB7", "EfficientNetB7", None, 2560, (600, 600), 32),
    ("InceptionV3", "InceptionV3", "inception_v3", 2048, (299, 299), 75),  # scales to [-1, 1]
    ("ResNet50", "ResNet50", "resnet50", 2048, (224, 224), 32),  # RGB -> BGR minus the ImageNet channel means
    ("MobileNetV3Large", "MobileNetV3Large", None, 960, (224, 224), 32),
    ("MobileNetV3Small", "MobileNetV3Small", None, 576, (224, 224), 32),
]


def _extractor_class(name, application, preprocessing, feature_dim, image_size, min_image_size) -> type:
    """The `<name>Extractor` class of one BACKBONES row, registered under `name`."""
    attributes = {
        "NAME": name, "APPLICATION": application, "PREPROCESSING": preprocessing, "FEATURE_DIM": feature_dim,
        "DEFAULT_IMAGE_SIZE": image_size, "MIN_IMAGE_SIZE": min_image_size,
        "__module__": __name__, "__qualname__": f"{name}Extractor",
        "__doc__": f"keras.applications.{application} without its classifier head, as a feature extractor.",
    }
    return register_extractor(name)(type(f"{name}Extractor", (KerasApplicationExtractor,), attributes))


# Module attributes EfficientNetB0Extractor ... MobileNetV3SmallExtractor, importable by name as before.
globals().update({f"{row[0]}Extractor": _extractor_class(*row) for row in BACKBONES})
