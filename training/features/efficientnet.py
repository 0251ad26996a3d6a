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
    """A keras.applications model with include_top=False; APPLICATION names its constructor."""

    APPLICATION: str = ""
    PREPROCESSING: str | None = None  # keras.applications module whose preprocess_input applies; None: model does it
    WEIGHTS_FILE: str = ""  # the name keras.applications gives the ImageNet weights without the classifier

    def build_model(self) -> keras.Model:
        build = getattr(keras.applications, self.APPLICATION)
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


# The files keras.applications downloads for include_top=False (and caches in ~/.keras/models): what an
# offline machine is given, and what training.kaggle_utils looks for in the attached data sets.
WEIGHTS_FILES = {
    **{f"EfficientNetB{i}": f"efficientnetb{i}_notop.h5" for i in range(8)},
    "InceptionV3": "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "ResNet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "MobileNetV3Large": "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
    "MobileNetV3Small": "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
}


def _extractor_class(name, application, preprocessing, feature_dim, image_size, min_image_size) -> type:
    """The `<name>Extractor` class of one BACKBONES row, registered under `name`."""
    attributes = {
        "NAME": name,
        "APPLICATION": application,
        "PREPROCESSING": preprocessing,
        "FEATURE_DIM": feature_dim,
        "WEIGHTS_FILE": WEIGHTS_FILES[name],
        "DEFAULT_IMAGE_SIZE": image_size,
        "MIN_IMAGE_SIZE": min_image_size,
        "__module__": __name__,
        "__qualname__": f"{name}Extractor",
        "__doc__": f"keras.applications.{application} without its classifier head, as a feature extractor.",
    }
    return register_extractor(name)(type(f"{name}Extractor", (KerasApplicationExtractor,), attributes))


# Module attributes EfficientNetB0Extractor ... MobileNetV3SmallExtractor, importable by name as before.
globals().update({f"{row[0]}Extractor": _extractor_class(*row) for row in BACKBONES})
