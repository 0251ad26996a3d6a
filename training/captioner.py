"""After training: one object that takes images and returns captions (extractor, decoder, vocabulary, settings).

    from training import Captioner
    captioner = Captioner.from_artifacts("artifacts/demo")
    captioner.save("captioner.keras")          # one file; keras.saving.load_model gives it back
    captioner.caption(["photo.jpg"])           # -> [Caption(text=..., score=...)]

Images go through the same decode, resize, preprocessing and float16 cast as the feature store, so a
captioned image gets the caption its stored features would. Batches are padded to a few fixed sizes
(BATCH_SIZES), each traced once, because tracing a beam search costs about a second; an image's caption
does not depend on the images it is batched with.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from training.data.dataset import pool_regions
from training.data.tokenizer import Tokenizer
from training.evaluation.batches import BATCH_SIZES, batch_sizes, decode_padded
from training.evaluation.inference import BeamSearchDecoder, Caption
from training.features import FeatureExtractorRegistry, get_feature_extractor
from training.features.images import decode_image, resize_image
from training.models.caption_model import CaptionModel

VOCABULARY_ASSET = "vocabulary.txt"


@keras.saving.register_keras_serializable(package="training")
class Captioner(keras.Model):
    """The run's feature extractor + caption model + vocabulary + decoding settings.

    `call(images)` maps a float (B, H, W, 3) batch in [0, 255] at `image_size` to the float16 region
    features (B, regions, channels) that the feature store holds; `caption` does the rest.
    The vocabulary is saved inside the .keras file as an asset (vocabulary.txt, one word per line).
    """

    def __init__(
        self,
        caption_model: CaptionModel,
        vocabulary: list[str] | None = None,
        extractor: str = "PatchGrid",
        image_size=(64, 64),
        use_regions: bool = True,
        beam_size: int = 3,
        length_penalty: float = 0.0,
        extractor_weights: str | None = None,
        extractor_spec: dict | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not caption_model.built:
            caption_model.build(((None, None, caption_model.feature_dim), (None, None)))
        self.caption_model = caption_model
        # Weights come from the run (extractor_weights) or, when loading, from the saved file; the network's shape
        # from its name or, when loading, from extractor_spec (a keras-hub backbone's config, saved in the file).
        self.extractor = get_feature_extractor(
            extractor, image_size=tuple(image_size), weights=extractor_weights, **(extractor_spec or {})
        )
        self.extractor_model = self.extractor.model
        self.extractor_name, self.image_size = extractor, tuple(int(s) for s in self.extractor.image_size)
        self.use_regions, self.beam_size, self.length_penalty = bool(use_regions), int(beam_size), float(length_penalty)
        self.tokenizer: Tokenizer | None = None
        if vocabulary is not None:
            self.set_vocabulary(vocabulary)
        self._decoders: dict[tuple[int, int, bool], BeamSearchDecoder] = {}  # (beam size, batch size, alternatives)
        self._encoded_features = tf.function(self._features_from_encoded, input_signature=[tf.TensorSpec([None], tf.string)])
        self._pixel_features = tf.function(self.call, reduce_retracing=True)
        self.built = True

    # ---- building ---------------------------------------------------------------------------------

    @classmethod
    def from_artifacts(cls, artifacts_dir, beam_size: int | None = None) -> Captioner:
        """The captioner of a finished run: its final model, vocabulary, extractor and beam_size."""
        from training.evaluation.loading import load_trained

        config, model, tokenizer = load_trained(Path(artifacts_dir))
        return cls.from_run(model, tokenizer, config, beam_size=beam_size)

    @classmethod
    def from_run(
        cls, model: CaptionModel, tokenizer: Tokenizer, config, beam_size: int | None = None, extractor_weights="run"
    ) -> Captioner:
        """From a run's parts; extractor_weights=None skips loading the CNN's weights (features are precomputed)."""
        m = config.model
        return cls(
            model,
            tokenizer.vocabulary,
            extractor=m.feature_extractor,
            image_size=m.image_size,
            use_regions=m.use_regions,
            beam_size=beam_size or config.training.beam_size,
            extractor_weights=m.extractor_weights if extractor_weights == "run" else extractor_weights,
            extractor_spec=FeatureExtractorRegistry().lookup(m.feature_extractor).config_spec(m),
            name="captioner",
        )

    def set_vocabulary(self, words) -> None:
        self.tokenizer = Tokenizer.from_vocabulary(words)
        if self.tokenizer.vocab_size != self.caption_model.vocab_size:
            raise ValueError(
                f"the vocabulary has {self.tokenizer.vocab_size} words but the model predicts "
                f"{self.caption_model.vocab_size}: use the wordtoix.json of the same run"
            )

    def get_config(self):
        config = super().get_config()
        config.update(
            caption_model=keras.saving.serialize_keras_object(self.caption_model),
            extractor=self.extractor_name,
            image_size=list(self.image_size),
            use_regions=self.use_regions,
            beam_size=self.beam_size,
            length_penalty=self.length_penalty,
            extractor_spec=self.extractor.spec(),
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["caption_model"] = keras.saving.deserialize_keras_object(config["caption_model"])
        return cls(**config)

    def save_assets(self, dir_path):
        Path(dir_path, VOCABULARY_ASSET).write_text("\n".join(self.tokenizer.vocabulary) + "\n", encoding="utf-8")

    def load_assets(self, dir_path):
        self.set_vocabulary(Path(dir_path, VOCABULARY_ASSET).read_text(encoding="utf-8").splitlines())

    # ---- images -> features (graph) ----------------------------------------------------------------

    def call(self, images):
        grid = self.extractor_model(self.extractor.preprocess(images), training=False)
        return tf.cast(tf.reshape(grid, (tf.shape(grid)[0], -1, grid.shape[-1])), tf.float16)

    def _features_from_encoded(self, images):
        size = self.image_size
        pixels = tf.map_fn(
            lambda data: decode_image(data, size), images, fn_output_signature=tf.TensorSpec((*size, 3), tf.float32)
        )
        return self.call(pixels)

    def features(self, images) -> np.ndarray:
        """float16 (N, regions, channels) of file paths, encoded bytes, or a uint8 (N, H, W, 3) batch."""
        if isinstance(images, np.ndarray) or tf.is_tensor(images):
            pixels = tf.convert_to_tensor(images)
            if pixels.dtype != tf.uint8 or pixels.shape.rank != 4 or pixels.shape[-1] != 3:
                raise ValueError(f"an image batch must be uint8 (N, height, width, 3), got {pixels.dtype.name} {pixels.shape}")
            if tuple(pixels.shape[1:3]) != self.image_size:
                pixels = tf.map_fn(
                    lambda image: resize_image(image, self.image_size),
                    pixels,
                    fn_output_signature=tf.TensorSpec((*self.image_size, 3), tf.float32),
                )
            return self._pixel_features(tf.cast(pixels, tf.float32)).numpy()
        encoded = [Path(item).read_bytes() if isinstance(item, (str, Path)) else bytes(item) for item in images]
        if not encoded:
            return np.zeros((0, self.extractor.num_regions, self.extractor.feature_dim), np.float16)
        return self._encoded_features(tf.constant(encoded, tf.string)).numpy()

    # ---- features -> captions ----------------------------------------------------------------------

    def decoder(self, beam_size: int | None, batch_size: int, alternatives: bool = False) -> BeamSearchDecoder:
        """The decoder of one beam size and one padded batch size (and whether it keeps the beam's
        alternatives): one trace each."""
        key = (int(beam_size or self.beam_size), int(batch_size), bool(alternatives))
        if key not in self._decoders:
            if self.tokenizer is None:
                raise RuntimeError("the captioner has no vocabulary: build it with from_artifacts or load_model")
            self._decoders[key] = BeamSearchDecoder(
                self.caption_model,
                self.tokenizer,
                beam_size=key[0],
                length_penalty=self.length_penalty,
                batch_size=key[1],
                alternatives=key[2],
            )
        return self._decoders[key]

    def caption(
        self,
        images,
        beam_size: int | None = None,
        attention: bool = False,
        max_batch: int = BATCH_SIZES[-1],
        alternatives: bool = False,
    ) -> list[Caption]:
        """Captions (text, score = sum of log-probs, tokens; attention and the beam's alternatives on
        request), one per image.

        `images`: file paths or encoded JPEG/PNG bytes (a list, or one), a uint8 (N, H, W, 3) batch, or
        precomputed float16/float32 region features (N, regions, channels) as the feature store holds them.
        """
        if isinstance(images, (str, Path, bytes)):
            images = [images]
        if tf.is_tensor(images):
            images = images.numpy()
        is_features = isinstance(images, np.ndarray) and images.dtype.kind == "f"
        sizes = batch_sizes(max_batch)
        captions: list[Caption] = []
        for start in range(0, len(images), sizes[-1]):
            part = images[start : start + sizes[-1]]
            features = np.asarray(part) if is_features else self.features(part)
            # After a full batch the last one is padded to the full size too: that search is traced already.
            captions += self.caption_features(features, beam_size, sizes if start == 0 else sizes[-1:], alternatives)
        if not attention:
            for c in captions:
                c.attention = None
                for other in c.alternatives or ():
                    other.attention = None
        return captions

    def caption_features(
        self, features: np.ndarray, beam_size: int | None = None, sizes=BATCH_SIZES, alternatives: bool = False
    ) -> list[Caption]:
        """One batch of at most max(sizes) images, padded with zeros to the next of `sizes`."""
        if features.ndim != 3:
            raise ValueError(f"region features must be (images, regions, channels), got shape {features.shape}")
        if not self.use_regions and features.shape[1] > 1:  # the run attends over the pooled vector only
            features = pool_regions(features).numpy()
        return decode_padded(lambda size: self.decoder(beam_size, size, alternatives), features, sizes)

    def warm_up(self, beam_size: int | None = None, max_batch: int = BATCH_SIZES[-1]) -> None:
        """Trace the feature graph and the search of every padded batch size, so no request pays for it."""
        shape = (self.extractor.num_regions, self.extractor.feature_dim)
        blank = tf.io.encode_png(tf.zeros((*self.image_size, 3), tf.uint8)).numpy()
        self.features([blank])
        for size in batch_sizes(max_batch):
            self.caption_features(np.zeros((size, *shape), np.float16), beam_size, (size,))

    # ---- export (graph only: the SavedModel needs nothing of this package) ---------------------------

    def serving_function(self, max_batch: int = BATCH_SIZES[-1]):
        """tf.string [None] encoded images -> {"captions": tf.string [None], "scores": float32 [None]}."""
        sizes = batch_sizes(max_batch)
        vocabulary = tf.constant(self.tokenizer.vocabulary)

        def search(features, size):
            count = tf.shape(features)[0]
            padded = tf.pad(features, [[0, size - count], [0, 0], [0, 0]])
            found = self.decoder(None, size)._search(tf.ensure_shape(padded, (size, *features.shape[1:])))
            found = {k: v[:count] for k, v in found.items()}
            # endseq is counted in `length` (it is scored) but is not part of the caption.
            words = tf.RaggedTensor.from_tensor(
                tf.gather(vocabulary, found["sequence"]), lengths=found["length"] - tf.cast(found["finished"], tf.int32)
            )
            return tf.strings.reduce_join(words, axis=1, separator=" "), found["log_prob"]

        def serve(images):
            features = tf.cast(self._features_from_encoded(images), tf.float32)
            if not self.use_regions:
                features = pool_regions(features)
            total = tf.shape(images)[0]
            captions = tf.TensorArray(tf.string, size=0, dynamic_size=True, infer_shape=False, element_shape=[None])
            scores = tf.TensorArray(tf.float32, size=0, dynamic_size=True, infer_shape=False, element_shape=[None])

            def body(chunk, captions, scores):
                part = features[chunk * sizes[-1] : (chunk + 1) * sizes[-1]]
                count = tf.shape(part)[0]
                branch = tf.reduce_sum(tf.cast(tf.constant(sizes) < count, tf.int32))  # the smallest size >= count
                text, score = tf.switch_case(branch, [lambda s=s: search(part, s) for s in sizes])
                return chunk + 1, captions.write(chunk, text), scores.write(chunk, score)

            chunks = (total + sizes[-1] - 1) // sizes[-1]
            _, captions, scores = tf.while_loop(lambda chunk, *_: chunk < chunks, body, (0, captions, scores))
            return {"captions": tf.ensure_shape(captions.concat(), [None]), "scores": tf.ensure_shape(scores.concat(), [None])}

        return serve
