"""Model stage: the caption model (image regions + caption prefix -> next-word logits).

`CaptionModel` trains with teacher forcing through `call((image_features, tokens))`, or
`call((image_features, tokens, positions))` on rows that pack an image's captions together, and
decodes incrementally through `encode` / `init_cache` / `decode_step`, which reuse cached
keys/values (transformer) or the LSTM state instead of re-running the prefix.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from training.configs.training_config import ARCHITECTURES, ModelConfig
from training.models.components import (
    Dense,
    Dropout,
    ImageProjection,
    LayerNormalization,
    LSTMEncoder,
    TextEmbedding,
    TransformerDecoderBlock,
)


@keras.saving.register_keras_serializable(package="training")
class CaptionModel(keras.Model):
    """Inputs: image_features (B, R, feature_dim) float, tokens (B, T) int with 0 = padding, and
    optionally positions (B, T) int.

    Output: logits (B, T, vocab_size) float32; position t predicts token t + 1.

    Without `positions` each row is one caption. With it a row may hold several captions of its
    image packed end to end (`DatasetBuilder` does this): positions[b, t] is token t's position
    in its own caption and 0 starts a new caption, which attends only to itself (and the regions).
    """

    def __init__(
        self,
        vocab_size: int,
        max_length: int,
        architecture: str = "transformer",
        feature_dim: int = 1536,
        embedding_dim: int = 200,
        train_embeddings: bool = True,
        hidden_dim: int = 256,
        num_layers: int = 2,
        num_heads: int = 8,
        ff_dim: int = 1024,
        dropout: float = 0.1,
        image_encoder: keras.layers.Layer | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
        self.vocab_size = vocab_size
        self.max_length = max_length
        self.architecture = architecture
        self.feature_dim = feature_dim
        self.embedding_dim = embedding_dim
        self.train_embeddings = train_embeddings
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.ff_dim = ff_dim
        self.dropout = dropout
        is_transformer = architecture == "transformer"

        # The image side's trainable part (the extractor's `trainable_encoder`), between the stored features and
        # the projection: it runs once per row, so once per image however many captions a row packs.
        self.image_encoder = image_encoder
        self.image_projection = ImageProjection(hidden_dim, dropout, name="image_projection")
        self.text_embedding = TextEmbedding(
            vocab_size,
            embedding_dim,
            hidden_dim,
            max_length,
            use_positions=is_transformer,  # the LSTM knows positions from its recurrence
            train_embeddings=train_embeddings,
            dropout=dropout,
            name="text_embedding",
        )
        if is_transformer:
            self.decoder_blocks = [
                TransformerDecoderBlock(hidden_dim, num_heads, ff_dim, dropout, name=f"decoder_block_{i}")
                for i in range(num_layers)
            ]
            self.final_norm = LayerNormalization(epsilon=1e-5, name="final_norm")
        else:
            self.lstm = LSTMEncoder(hidden_dim, name="lstm")
            self.output_dropout = Dropout(dropout)
        # The logits matmul, the step's largest, runs in the compute dtype; its output is cast to
        # float32 in `call` so the softmax and loss stay float32 (as the Keras mixed-precision guide does).
        self.output_layer = Dense(vocab_size, name="logits")

    # ------------------------------------------------------------------ build / training path

    def build(self, input_shape):
        features_shape, tokens_shape = (tuple(shape) for shape in input_shape[:2])
        hidden_shape = tokens_shape + (self.hidden_dim,)
        regions_shape = features_shape[:-1] + (self.hidden_dim,)
        if self.image_encoder is not None:
            if not self.image_encoder.built:  # a functional sub-model comes built
                self.image_encoder.build(features_shape)
            features_shape = tuple(self.image_encoder.compute_output_shape(features_shape))
            # 1: the encoder trains; 0: no gradient reaches it (fine_tune_after's frozen epochs). A variable, set by
            # a callback from the epoch number, so `fit` stays compiled once and a resumed run sets it alike.
            self.encoder_gate = self.add_weight(shape=(), initializer="ones", trainable=False, name="encoder_gate")
        self.image_projection.build(features_shape)
        self.text_embedding.build(tokens_shape)
        if self.architecture == "transformer":
            for block in self.decoder_blocks:
                block.build(hidden_shape, regions_shape)
            self.final_norm.build(hidden_shape)
        else:
            self.lstm.build(hidden_shape, regions_shape)
        self.output_layer.build(hidden_shape)
        self.built = True

    def call(self, inputs, training=None):
        image_features, tokens = inputs[0], ops.cast(inputs[1], "int32")
        positions = ops.cast(inputs[2], "int32") if len(inputs) > 2 else None
        regions = self.project_image(image_features, training=training)
        x = self.text_embedding(tokens, positions=positions, training=training)
        is_token = ops.not_equal(tokens, 0)
        starts = None if positions is None else ops.logical_and(ops.equal(positions, 0), is_token)
        if self.architecture == "transformer":
            index = ops.arange(ops.shape(tokens)[1], dtype="int32")
            causal = ops.expand_dims(index, 1) >= ops.expand_dims(index, 0)  # (T, T): query >= key
            # (B, T, T): a query sees earlier, non-padding keys ...
            visible = ops.logical_and(causal[None], is_token[:, None, :])
            if starts is not None:  # ... of its own caption
                caption = ops.cumsum(ops.cast(starts, "int32"), axis=1)
                visible = ops.logical_and(visible, ops.equal(caption[:, :, None], caption[:, None, :]))
            self_mask = visible[:, None]  # (B, 1, T, T): the same for every head
            for block in self.decoder_blocks:
                x = block(x, regions, self_mask=self_mask, training=training)
            x = self.final_norm(x)
        else:
            x = self.output_dropout(self.lstm(x, regions, token_mask=is_token, starts=starts), training=training)
        return ops.cast(self.output_layer(x), "float32")

    def project_image(self, image_features, training=None):
        """Stored features (B, R, feature_dim) -> regions (B, R', hidden_dim): the trainable encoder, if any, then
        the projection."""
        if self.image_encoder is not None:
            encoded = self.image_encoder(image_features, training=training)
            gate = ops.cast(self.encoder_gate, encoded.dtype)
            image_features = gate * encoded + (1 - gate) * ops.stop_gradient(encoded)
        return self.image_projection(image_features, training=training)

    @property
    def input_regions(self) -> int | None:
        """The number of regions the stored features must have: fixed by a trainable encoder's grid, else any."""
        grid = getattr(self.image_encoder, "grid", None)
        return None if grid is None else int(np.prod(grid))

    # ------------------------------------------------------------------ incremental decoding

    def encode(self, image_features):
        """Image features (B, R, feature_dim) -> memory, computed once per image batch.

        transformer: {"keys": (k_layer0, ...), "values": (v_layer0, ...)}, each (B, heads, R, hidden/heads)
        lstm_attention: {"regions": (B, R, hidden), "region_keys": (B, R, hidden)}
        """
        regions = self.project_image(image_features, training=False)
        if self.architecture == "transformer":
            pairs = [block.cross_attention.key_values(regions) for block in self.decoder_blocks]
            return {"keys": tuple(k for k, _ in pairs), "values": tuple(v for _, v in pairs)}
        return {"regions": regions, "region_keys": self.lstm.attention.region_keys(regions)}

    def init_cache(self, batch_size):
        """Empty decoding state for `batch_size` sequences (int or scalar tensor).

        transformer: {"keys": (...), "values": (...)}, per layer (B, heads, 0, hidden/heads): each
            decode_step appends a position, so in a loop only the last axis keeps its size
        lstm_attention: {"h": (B, hidden), "c": (B, hidden)} zeros
        """
        if self.architecture == "transformer":
            shape = (batch_size, self.num_heads, 0, self.hidden_dim // self.num_heads)
            buffers = tuple(ops.zeros(shape, dtype=self.compute_dtype) for _ in self.decoder_blocks)
            return {"keys": buffers, "values": tuple(ops.zeros_like(b) for b in buffers)}
        h, c = self.lstm.initial_state(batch_size)
        return {"h": h, "c": c}

    def decode_step(self, tokens, step, memory, cache):
        """tokens (B,) int at position `step` (int32 scalar, 0-based) -> (logits, cache, attention).

        `memory` is `encode` of B / k images, k dividing B: rows i * k .. i * k + k - 1 are image i's
        (beam search passes each image's memory once for its k hypotheses; k = 1 otherwise).

        logits (B, vocab_size) float32 predict the token at step + 1; attention (B, R) float32
        is the last layer's cross-attention averaged over heads (transformer) or the
        Bahdanau weights (LSTM).
        """
        tokens = ops.expand_dims(ops.cast(tokens, "int32"), 1)
        step = ops.cast(step, "int32")
        if self.architecture == "transformer":
            x = self.text_embedding(tokens, start=step, training=False)
            new_keys, new_values = [], []
            for i, block in enumerate(self.decoder_blocks):
                region_kv = (memory["keys"][i], memory["values"][i])
                x, (keys, values), weights = block.decode_step(x, region_kv, (cache["keys"][i], cache["values"][i]))
                new_keys.append(keys)
                new_values.append(values)
            logits = ops.cast(self.output_layer(self.final_norm(x))[:, 0], "float32")
            attention = ops.mean(weights[:, :, 0, :], axis=1)
            return logits, {"keys": tuple(new_keys), "values": tuple(new_values)}, attention
        word = self.text_embedding(tokens, training=False)[:, 0]
        state = (cache["h"], cache["c"])
        (h, c), attention = self.lstm.step(word, state, memory["regions"], memory["region_keys"])
        return ops.cast(self.output_layer(h), "float32"), {"h": h, "c": c}, attention

    def get_config(self):
        config = super().get_config()
        config.update(
            vocab_size=self.vocab_size,
            max_length=self.max_length,
            architecture=self.architecture,
            feature_dim=self.feature_dim,
            embedding_dim=self.embedding_dim,
            train_embeddings=self.train_embeddings,
            hidden_dim=self.hidden_dim,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            ff_dim=self.ff_dim,
            dropout=self.dropout,
            image_encoder=None if self.image_encoder is None else self._encoder_config(),
        )
        return config

    def _encoder_config(self) -> dict:
        """The image encoder's serialization without its build config, so it is deserialized unbuilt and `build`
        makes its weights inside this model, as when the model was first built."""
        serialized = keras.saving.serialize_keras_object(self.image_encoder)
        return {key: value for key, value in serialized.items() if key != "build_config"}

    @classmethod
    def from_config(cls, config):
        """The model as saved, every layer in the precision policy it was saved with.

        Sublayers made in `__init__` take Keras' global policy, not their parent's: a model trained in
        mixed_bfloat16 and loaded in a float32 process would otherwise compute in float32 inside a bfloat16
        shell, and caption differently from the run that scored it (the demo's test CIDEr 4.478 against the
        4.551 the run reported). So the global policy is the saved one while the model is rebuilt."""
        config = dict(config)
        saved = keras.dtype_policies.get(config["dtype"]) if config.get("dtype") is not None else None
        previous = keras.mixed_precision.global_policy()
        if saved is not None:
            keras.mixed_precision.set_global_policy(saved)
        try:
            if config.get("image_encoder") is not None:
                config["image_encoder"] = keras.saving.deserialize_keras_object(config["image_encoder"])
            return cls(**config)
        finally:
            keras.mixed_precision.set_global_policy(previous)


def trainable_image_encoder(model_config: ModelConfig) -> keras.layers.Layer | None:
    """The extractor's trainable part under this config (ConvEncoder's conv net, a fine-tuned backbone's top), or
    None (features as stored)."""
    from training.features.registry import FeatureExtractorRegistry, extractor_for

    registry = FeatureExtractorRegistry()
    if model_config.feature_extractor not in registry:
        return None  # a name registered later (a user's extractor); the pipeline checks names before training
    if not registry.lookup(model_config.feature_extractor).has_trainable_part(model_config):
        return None
    return extractor_for(model_config).trainable_encoder(model_config)


def build_caption_model(
    model_config: ModelConfig,
    vocab_size: int,
    max_length: int,
    embedding_matrix: np.ndarray | None = None,
) -> CaptionModel:
    """A built CaptionModel; `embedding_matrix` (vocab_size, embedding_dim) seeds the word table.

    Without a matrix the word table is random, so it is trained whatever train_embeddings says.
    """
    if embedding_matrix is not None:
        expected = (vocab_size, model_config.embedding_dim)
        if tuple(embedding_matrix.shape) != expected:
            raise ValueError(
                f"embedding_matrix has shape {tuple(embedding_matrix.shape)}, expected {expected} "
                "(vocab_size, model.embedding_dim): rebuild it with the same vocabulary and embedding_dim"
            )
    model = CaptionModel(
        image_encoder=trainable_image_encoder(model_config),
        vocab_size=vocab_size,
        max_length=max_length,
        architecture=model_config.architecture,
        feature_dim=model_config.feature_dim,
        embedding_dim=model_config.embedding_dim,
        train_embeddings=model_config.train_embeddings or embedding_matrix is None,
        hidden_dim=model_config.hidden_dim,
        num_layers=model_config.num_layers,
        num_heads=model_config.num_heads,
        ff_dim=model_config.ff_dim,
        dropout=model_config.dropout,
        name=f"caption_model_{model_config.architecture}",
    )
    model.build(((None, None, model_config.feature_dim), (None, None)))
    if embedding_matrix is not None:
        # Assigned after build rather than via an initializer, so the matrix is stored once
        # (as weights) and not copied into the model's JSON config.
        model.text_embedding.token_embedding.embeddings.assign(np.asarray(embedding_matrix, dtype="float32"))
    return model
