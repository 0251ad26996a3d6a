"""Image -> feature grid with keras.applications backbones (EfficientNetB0-B7, InceptionV3, ResNet50, MobileNetV3).

Each extractor is the backbone without its classifier head: the output is the last
convolutional grid, e.g. EfficientNetB3 at 300 px -> 10x10x1536 -> 100 regions x 1536.
`weights="imagenet"` downloads the ImageNet weights on first use; a path loads a weights file
(offline machines: keras.applications' own file, WEIGHTS_FILE, copied or attached as a data set);
`weights=None` builds the same network randomly initialised (tests).
"""

from __future__ import annotations

import re
from pathlib import Path

import keras
import tensorflow as tf

from training.configs.training_config import ConfigError, is_weights_file
from training.errors import UserInputError
from training.features.base import BaseFeatureExtractor
from training.features.registry import register_extractor

# The layers that end a block in keras.applications' naming (EfficientNet, MobileNetV3, ResNet, InceptionV3): where
# an integer fine_tune_from counts blocks from.
BLOCK_END = re.compile(r"(_add|_project_bn|_out)$|^mixed\d+$")


class KerasApplicationExtractor(BaseFeatureExtractor):
    """A keras.applications model with include_top=False; NAME names its constructor.

    With `fine_tune_from` (a layer name, or N: the top N blocks) the backbone is split there: the frozen prefix
    is this extractor's network, whose output the feature store caches, and the rest is `trainable_encoder`,
    which the caption model trains (`BackboneTop`)."""

    PREPROCESSING: str | None = None  # keras.applications module whose preprocess_input applies; None: model does it
    WEIGHTS_FILE: str = ""  # the name keras.applications gives the ImageNet weights without the classifier

    def __init__(self, image_size=None, weights="imagenet", batch_size: int = 32, fine_tune_from: str | int | None = None):
        super().__init__(image_size=image_size, weights=weights, batch_size=batch_size)
        self.fine_tune_from = fine_tune_from
        self._backbone = None  # the whole network, split at the cut
        self._cut = None  # the name of the layer whose output the store caches
        if fine_tune_from is not None:
            self.FEATURE_DIM = 0  # the prefix's channels, known once it is built

    @classmethod
    def config_spec(cls, model_config) -> dict:
        return {} if model_config.fine_tune_from is None else {"fine_tune_from": model_config.fine_tune_from}

    @classmethod
    def has_trainable_part(cls, model_config) -> bool:
        return model_config.fine_tune_from is not None

    def spec(self) -> dict:
        return {} if self.fine_tune_from is None else {"fine_tune_from": self.fine_tune_from}

    def recipe(self) -> dict:
        """The cut is part of what the features are: a store of the whole backbone never serves a prefix."""
        recipe = super().recipe()
        if self.fine_tune_from is not None:
            self.model  # noqa: B018 - finds the cut
            recipe["extractor"] = f"{self.name} up to {self._cut}"
        return recipe

    def build_model(self) -> keras.Model:
        backbone = self.backbone()
        if self.fine_tune_from is None:
            return backbone
        self._cut = self.cut_layer(backbone)
        return keras.Model(backbone.input, backbone.get_layer(self._cut).output, name=f"{backbone.name}_frozen")

    def trainable_encoder(self, model_config) -> keras.layers.Layer | None:
        """The backbone above the cut, sharing the weights the prefix was built with, as a `BackboneTop`."""
        if self.fine_tune_from is None:
            return None
        prefix = self.model
        backbone = self._backbone
        top = keras.Model(backbone.get_layer(self._cut).output, backbone.output, name=f"{backbone.name}_top")
        return BackboneTop(prefix.output_shape[1:3], top, name="image_encoder")

    def cut_layer(self, backbone: keras.Model) -> str:
        """The layer named by fine_tune_from (a name, or N: the end of the (N + 1)-th last block); a name that does
        not split the network in two (a skip connection crosses it) or an N out of range is a ConfigError."""
        chosen = self.fine_tune_from
        if isinstance(chosen, int):
            ends = self.block_ends(backbone)
            if not 1 <= chosen < len(ends):
                raise ConfigError(
                    f"'fine_tune_from': {self.name} has {len(ends)} blocks, so an integer must be in [1, {len(ends) - 1}] "
                    f"(the top N blocks train), got {chosen}; or give a layer name: {', '.join(ends)}"
                )
            return ends[-(chosen + 1)]
        names = [layer.name for layer in backbone.layers]
        if chosen not in names or not self.splits(backbone, chosen):
            why = "is not a layer of" if chosen not in names else "does not split (a skip connection crosses it)"
            raise ConfigError(
                f"'fine_tune_from': {chosen!r} {why} {self.name}; choose a block end: {', '.join(self.block_ends(backbone))} "
                f"(or an integer N: the top N blocks train)"
            )
        return chosen

    @staticmethod
    def splits(backbone: keras.Model, name: str) -> bool:
        """True when everything above layer `name` depends on its output alone."""
        try:
            keras.Model(backbone.get_layer(name).output, backbone.output)
        except ValueError:
            return False
        return True

    def block_ends(self, backbone: keras.Model) -> list[str]:
        """The layers that end a block and split the network, in order."""
        names = [layer.name for layer in backbone.layers[1:-1] if BLOCK_END.search(layer.name)]
        return [name for name in names if self.splits(backbone, name)]

    def backbone(self) -> keras.Model:
        """The whole network, built once: the prefix and the trainable top share its weights."""
        if self._backbone is None:
            self._backbone = self._build_backbone()
        return self._backbone

    def _build_backbone(self) -> keras.Model:
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


@keras.saving.register_keras_serializable(package="training")
class BackboneTop(keras.layers.Layer):
    """Stored prefix features (B, rows * cols, channels) -> the backbone's top blocks -> (B, regions, channels).

    Its batch normalization layers stay in inference mode with their statistics and scales frozen, the standard
    practice when fine-tuning with small batches (a dozen images per batch would give noisy statistics, and an
    image's features would depend on its batch); the convolutions train.
    """

    def __init__(self, grid, network: keras.Model, **kwargs):
        super().__init__(**kwargs)
        self.grid = tuple(int(g) for g in grid)
        self.network = network
        for layer in network.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False

    def build(self, input_shape):
        self.built = True  # the network comes built

    def call(self, regions, training=None):
        x = keras.ops.reshape(regions, (-1, *self.grid, regions.shape[-1]))
        x = self.network(x, training=training)
        return keras.ops.reshape(x, (-1, x.shape[1] * x.shape[2], x.shape[3]))

    def compute_output_shape(self, input_shape):
        shape = self.network.compute_output_shape((input_shape[0], *self.grid, input_shape[-1]))
        return (input_shape[0], shape[1] * shape[2], shape[3])

    def get_config(self):
        config = super().get_config()
        config.update(grid=list(self.grid), network=keras.saving.serialize_keras_object(self.network))
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**dict(config, network=keras.saving.deserialize_keras_object(config["network"])))


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
