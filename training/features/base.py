"""Image -> feature grid: the extractor interface every backbone implements."""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from training.features.images import find_bad_images, image_dataset
from training.run.lifecycle import weights_identity


class BaseFeatureExtractor(abc.ABC):
    """A backbone that turns an RGB image into a grid of region vectors, (regions, channels).

    Subclasses set NAME, FEATURE_DIM and DEFAULT_IMAGE_SIZE and implement `build_model()`,
    a Keras model from a preprocessed (batch, height, width, 3) batch to a (batch, h, w,
    channels) grid. Everything else (decoding, batching, bad images) is shared.
    """

    NAME: str = ""
    FEATURE_DIM: int = 0
    DEFAULT_IMAGE_SIZE: tuple[int, int] = (224, 224)
    MIN_IMAGE_SIZE: int = 32  # smallest side the backbone accepts
    STORES_PIXELS: bool = False  # True: the stored features are the image's pixels in [-1, 1] (augment applies)

    def __init__(self, image_size=None, weights: str | None = "imagenet", batch_size: int = 32):
        size = self.DEFAULT_IMAGE_SIZE if image_size is None else image_size
        size = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
        if len(size) != 2 or min(size) < self.MIN_IMAGE_SIZE:
            raise ValueError(
                f"{self.name}: image_size {image_size!r} must be (height, width) with both sides "
                f">= {self.MIN_IMAGE_SIZE} px; set model.image_size in the config "
                f"(default for {self.name}: {tuple(self.DEFAULT_IMAGE_SIZE)})"
            )
        if int(batch_size) < 1:
            raise ValueError(f"{self.name}: batch_size must be >= 1, got {batch_size!r}")
        self.image_size: tuple[int, int] = size
        self.weights = weights
        self.batch_size = int(batch_size)
        self.bad_images: list[dict] = []
        self._model = None
        self._predict = None

    @property
    def name(self) -> str:
        return self.NAME or type(self).__name__

    def recipe(self) -> dict:
        """What its features depend on besides the image size: the backbone and its weights, a file by its
        contents (so a moved weights file keeps a feature store valid)."""
        return {"extractor": self.name, "weights": weights_identity(self.weights)}

    @classmethod
    def config_spec(cls, model_config) -> dict:
        """Keyword arguments of this extractor that a run's model config sets (beside image size and weights)."""
        return {}

    @classmethod
    def has_trainable_part(cls, model_config) -> bool:
        """True when, under `model_config`, part of the image side trains with the decoder (`trainable_encoder`)."""
        return False

    def trainable_encoder(self, model_config) -> keras.layers.Layer | None:
        """The image side's trainable part: a layer the caption model runs on the stored features (B, regions,
        channels) before its decoder, trained with it and saved in its .keras file; None: features as stored."""
        return None

    def spec(self) -> dict:
        """Keyword arguments that rebuild this network without what it was made from (a saved Captioner keeps them)."""
        return {}

    @abc.abstractmethod
    def build_model(self) -> keras.Model:
        """Return the backbone: preprocessed (B, H, W, 3) float32 -> (B, h, w, channels)."""

    def preprocess(self, images):
        """Turn a uint8/float RGB batch in [0, 255] into model input (runs inside tf.data)."""
        return tf.cast(images, tf.float32)

    @property
    def model(self) -> keras.Model:
        if self._model is None:
            model = self._build_in_float32()
            if not isinstance(model, keras.Model):
                raise TypeError(f"{type(self).__name__}.build_model() must return a keras.Model, got {type(model).__name__}")
            shape = tuple(model.output_shape)
            if len(shape) != 4:
                raise ValueError(f"{type(self).__name__}.build_model() must output (batch, h, w, channels), got {shape}")
            if self.FEATURE_DIM and shape[-1] != self.FEATURE_DIM:
                raise ValueError(
                    f"{type(self).__name__}: FEATURE_DIM is {self.FEATURE_DIM} but the model gives {shape[-1]} channels"
                )
            self._model = model
        return self._model

    def _build_in_float32(self) -> keras.Model:
        """build_model() in float32, whatever the run's precision policy: a store's features must not depend on
        the machine that extracted them (a CPU with bfloat16 trains in mixed_bfloat16), and they must be those
        the Captioner and the exported graph compute, in float32."""
        policy = keras.config.dtype_policy()
        keras.config.set_dtype_policy("float32")
        try:
            return self.build_model()
        finally:
            keras.config.set_dtype_policy(policy)

    @property
    def grid_shape(self) -> tuple[int, int]:
        return tuple(int(s) for s in self.model.output_shape[1:3])

    @property
    def num_regions(self) -> int:
        height, width = self.grid_shape
        return height * width

    @property
    def feature_dim(self) -> int:
        return int(self.model.output_shape[-1])

    def dataset(self, paths: Sequence[str]) -> tf.data.Dataset:
        return image_dataset(paths, self.image_size, self.batch_size, preprocess=self.preprocess)

    def predict_batch(self, images) -> tf.Tensor:
        """Preprocessed (B, H, W, 3) batch -> float16 (B, regions, channels), in one compiled graph."""
        if self._predict is None:
            model = self.model

            # Reshape and float16 cast run inside the graph: done in NumPy they took a large share of the
            # model's time, while TensorFlow's idle worker threads spun waiting for the next batch.
            @tf.function(reduce_retracing=True)
            def predict(images):
                grid = model(images, training=False)
                return tf.cast(tf.reshape(grid, (tf.shape(grid)[0], -1, grid.shape[-1])), tf.float16)

            self._predict = predict
        return self._predict(images)

    def iter_features(self, paths: Sequence[str]) -> Iterator[np.ndarray]:
        """Yield float16 (batch, regions, channels) arrays for `paths`, in order."""
        batches = iter(self.dataset(paths))
        start = 0
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except tf.errors.OpError as error:
                # Pillow accepted these files up front; TensorFlow's decoder still refused one of them.
                names = ", ".join(paths[start : start + self.batch_size][:8])
                raise RuntimeError(
                    f"TensorFlow could not decode an image among: {names}: {error.message.splitlines()[0]}; "
                    "remove or re-save that file (as JPEG or PNG) and run again"
                ) from None
            features = self.predict_batch(batch).numpy()
            start += len(features)
            yield features

    def extract_features(self, image_keys: Iterable[str], images_path, verbose: int = 1) -> dict[str, np.ndarray]:
        """Features of every readable image, {image_key: (regions, channels) float16}.

        Unreadable images are left out and listed on `self.bad_images`.
        """
        keys = list(image_keys)
        self.bad_images = find_bad_images(keys, images_path, verbose=verbose)
        bad = {entry["image"] for entry in self.bad_images}
        good = [key for key in keys if key not in bad]
        paths = [str(Path(images_path) / key) for key in good]
        features: dict[str, np.ndarray] = {}
        row = 0
        with tqdm(total=len(good), desc=f"{self.name} features", unit="img", disable=not verbose) as progress:
            for batch in self.iter_features(paths):
                features.update(zip(good[row : row + len(batch)], batch))
                row += len(batch)
                progress.update(len(batch))
        return features
