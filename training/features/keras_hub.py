"""Image -> patch tokens with keras-hub's vision encoders (CLIP, SigLIP, DINOv2): `feature_extractor: keras_hub:<preset>`.

<preset> is a keras-hub preset name (clip_vit_base_patch16, siglip_base_patch16_224, dinov2_base, ...:
downloaded on first use) or a local preset folder: a Kaggle model attached to a notebook, or one written
with `backbone.save_to_preset(folder)` and `image_converter.save_to_preset(folder)` (offline machines).
Each patch token is a region: a ViT-B/16 at 224 px gives 14x14 regions of 768 values. `keras_hub_cls:<preset>`
adds the class token (SigLIP, which has none, its attention-pooled vector) as one more region, so its regions
are a row of patches + 1 rather than a grid.

Images are normalised as the preset's image converter does (its scale and offset); the resizing is the
pipeline's, as for every extractor, to model.image_size, which must be the preset's image size.
extractor_weights: `imagenet` loads the preset's own weights, null the network randomly initialised,
a path a weights file saved from the same backbone (`backbone.save_weights(...)`).
keras-hub is an optional dependency (pyproject.toml, extra `keras-hub`).
"""

from __future__ import annotations

from pathlib import Path

import keras
import tensorflow as tf

from training.configs.training_config import is_weights_file
from training.errors import UserInputError
from training.features.base import BaseFeatureExtractor
from training.features.registry import register_family
from training.run.lifecycle import extractor_identity

PREFIX, CLASS_TOKEN_PREFIX = "keras_hub", "keras_hub_cls"


def _keras_hub():
    try:
        import keras_hub
    except ImportError as error:
        raise UserInputError(
            f"'feature_extractor': keras_hub extractors need keras-hub ({error}); "
            "install it: pip install -e '.[keras-hub]' (see the README's Configuration)"
        ) from None
    return keras_hub


def vision_tokens(backbone) -> tuple:
    """(image input, class token (B, C), patch tokens (B, N, C), patch size) of a keras-hub backbone's graph."""
    keras_hub = _keras_hub()
    models = keras_hub.models
    encoder = getattr(backbone, "vision_encoder", backbone)  # CLIPBackbone, SigLIPBackbone: the vision half
    images = encoder.input["images"] if isinstance(encoder.input, dict) else encoder.input
    if isinstance(encoder, models.CLIPVisionEncoder):
        tokens = encoder.output  # class token, then the patches
        return images, tokens[:, 0], tokens[:, 1:], encoder.patch_size
    if isinstance(encoder, models.SigLIPVisionEncoder):
        # No class token: the patches before the attention-pooling head, and that head's pooled vector.
        return images, encoder.output, encoder.post_layer_norm.output, encoder.patch_size
    if isinstance(encoder, models.DINOV2Backbone):
        tokens = encoder.output  # class token, register tokens, then the patches
        return images, tokens[:, 0], tokens[:, 1 + encoder.num_register_tokens :], encoder.patch_size
    raise UserInputError(
        f"'feature_extractor': {type(backbone).__name__} is not a vision encoder this pipeline "
        "reads; keras_hub extractors take CLIP, SigLIP and DINOv2 presets"
    )


class KerasHubExtractor(BaseFeatureExtractor):
    """A keras-hub vision encoder's patch tokens (and, with CLASS_TOKEN, its class token) as regions."""

    PRESET: str = ""
    CLASS_TOKEN: bool = False
    MIN_IMAGE_SIZE = 8

    def __init__(
        self,
        image_size=None,
        weights: str | None = "imagenet",
        batch_size: int = 32,
        backbone: dict | None = None,
        converter: dict | None = None,
    ):
        # backbone, converter: their serialized configs (spec()), to rebuild the network without its preset.
        self._backbone_config = backbone
        self._converter = keras.saving.deserialize_keras_object(converter) if converter and _keras_hub() else None
        self._backbone = None
        if image_size is None:
            image_size = tuple(self.converter.image_size)
        super().__init__(image_size=image_size, weights=weights, batch_size=batch_size)

    @property
    def converter(self):
        """The preset's image converter: its scale and offset are the encoder's normalisation."""
        if self._converter is None:
            try:
                self._converter = _keras_hub().layers.ImageConverter.from_preset(self.PRESET)
            except (ValueError, FileNotFoundError, OSError) as error:
                raise UserInputError(
                    f"'feature_extractor': {self.name}: no image converter in the preset ({error}); a local preset "
                    "folder needs the encoder's image_converter.json (image_converter.save_to_preset(folder))"
                ) from None
        return self._converter

    def preprocess(self, images):
        images = tf.cast(images, tf.float32)
        if self.converter.scale is not None:
            images = images * tf.constant(self.converter.scale, tf.float32)
        if self.converter.offset is not None:
            images = images + tf.constant(self.converter.offset, tf.float32)
        return images

    def spec(self) -> dict:
        """The backbone's and the image converter's configs: a saved Captioner rebuilds the network from them,
        without the preset (which may be a folder of another machine)."""
        backbone = self._backbone_config or keras.saving.serialize_keras_object(self.load_backbone())
        return {"backbone": backbone, "converter": keras.saving.serialize_keras_object(self.converter)}

    def load_backbone(self):
        """The preset's backbone with the weights extractor_weights names (once); from its config when given one."""
        if self._backbone is None:
            self._backbone = self._load_backbone()
        return self._backbone

    def _load_backbone(self):
        backbone_class = _keras_hub().models.Backbone
        if self._backbone_config:  # (_keras_hub() has registered keras-hub's classes for deserialization)
            return keras.saving.deserialize_keras_object(self._backbone_config)
        try:
            backbone = backbone_class.from_preset(self.PRESET, load_weights=self.weights == "imagenet")
        except (ValueError, FileNotFoundError) as error:
            raise UserInputError(f"'feature_extractor': {self.name}: cannot load the preset ({error})") from None
        if is_weights_file(self.weights):
            if not Path(self.weights).is_file():
                raise UserInputError(
                    f"'extractor_weights': file not found: {self.weights} ({self.name} needs it: "
                    "put it back, or point extractor_weights at its new place)"
                )
            try:
                backbone.load_weights(self.weights)
            except (ValueError, OSError) as error:
                reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise UserInputError(
                    f"'extractor_weights': {self.weights} does not load into {self.name} "
                    f"({reason}); save it from the same backbone (backbone.save_weights)"
                ) from None
        return backbone

    def build_model(self) -> keras.Model:
        images, class_token, patches, patch_size = vision_tokens(self.load_backbone())
        size = tuple(int(side) for side in images.shape[1:3])
        if size != self.image_size:
            raise UserInputError(
                f"'image_size': {self.name} takes {list(size)} px images, not {list(self.image_size)}: "
                f"set image_size: {list(size)}"
            )
        # The grid from the image and patch sizes: keras-hub 0.32 gives SigLIP's patches a static length one too many.
        rows, cols, channels = size[0] // patch_size, size[1] // patch_size, patches.shape[-1]
        if self.CLASS_TOKEN:  # one row: the patches, then the class token
            regions = keras.ops.concatenate([patches, keras.ops.expand_dims(class_token, 1)], axis=1)
            grid = keras.ops.reshape(regions, (-1, 1, rows * cols + 1, channels))
        else:
            grid = keras.ops.reshape(patches, (-1, rows, cols, channels))
        return keras.Model(images, grid, name="keras_hub_regions")

    def recipe(self) -> dict:
        """A local preset by its files' contents (a moved folder keeps its feature store), a named one by its name."""
        return dict(super().recipe(), extractor=extractor_identity(f"{self.name.partition(':')[0]}:{self.PRESET}"))


def extractor_class(name: str, preset: str) -> type:
    """The extractor of `name` ('keras_hub:<preset>' or 'keras_hub_cls:<preset>'); a local preset by its absolute path."""
    if not preset:
        raise ValueError(f"'feature_extractor': {name!r} names no preset: use {PREFIX}:<preset name or folder>")
    folder = Path(preset).expanduser()
    if folder.is_dir():
        preset = str(folder.resolve())
    attributes = {
        "NAME": name,
        "PRESET": preset,
        "CLASS_TOKEN": name.startswith(f"{CLASS_TOKEN_PREFIX}:"),
        "__module__": __name__,
        "__qualname__": "KerasHubExtractor",
    }
    return type("KerasHubExtractor", (KerasHubExtractor,), attributes)


register_family(PREFIX, extractor_class)
register_family(CLASS_TOKEN_PREFIX, extractor_class)
