"""Model stage, input encoders: image regions and caption words into the decoder's hidden size.

The decoder cores that read them: training/models/components/decoders.py.
"""

from __future__ import annotations

import keras
from keras import ops

from training.models.components.dense import Dense
from training.models.components.dropout import Dropout
from training.models.components.normalization import LayerNormalization


@keras.saving.register_keras_serializable(package="training")
class ImageProjection(keras.layers.Layer):
    """Image regions (B, R, feature_dim) -> (B, R, hidden_dim)."""

    def __init__(self, hidden_dim: int, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.dropout = dropout
        self.dense = Dense(hidden_dim, name="dense")
        # CNN features have arbitrary scale per channel; normalising keeps attention logits sane.
        self.norm = LayerNormalization(epsilon=1e-5, name="norm")
        self.dropout_layer = Dropout(dropout)

    def build(self, input_shape):
        self.dense.build(input_shape)
        self.norm.build(tuple(input_shape[:-1]) + (self.hidden_dim,))
        self.built = True

    def call(self, image_features, training=None):
        return self.dropout_layer(self.norm(self.dense(image_features)), training=training)

    def get_config(self):
        config = super().get_config()
        config.update(hidden_dim=self.hidden_dim, dropout=self.dropout)
        return config


@keras.saving.register_keras_serializable(package="training")
class TextEmbedding(keras.layers.Layer):
    """Tokens (B, T) -> (B, T, hidden_dim): word vectors (GloVe-sized), projected, plus positions.

    The word table keeps `embedding_dim` so pretrained vectors load as they are; the
    projection to `hidden_dim` is always trained.
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        hidden_dim: int,
        max_length: int,
        use_positions: bool = True,
        train_embeddings: bool = True,
        dropout: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.hidden_dim = hidden_dim
        self.max_length = max_length
        self.use_positions = use_positions
        self.train_embeddings = train_embeddings
        self.dropout = dropout
        self.token_embedding = keras.layers.Embedding(
            vocab_size, embedding_dim, trainable=train_embeddings, name="token_embedding"
        )
        self.projection = Dense(hidden_dim, name="projection")
        self.position_embedding = (
            keras.layers.Embedding(max_length, hidden_dim, name="position_embedding") if use_positions else None
        )
        self.dropout_layer = Dropout(dropout)

    def build(self, input_shape):
        self.token_embedding.build(input_shape)
        self.projection.build(tuple(input_shape) + (self.embedding_dim,))
        if self.position_embedding is not None:
            self.position_embedding.build((None,))
        self.built = True

    def call(self, tokens, start=0, positions=None, training=None):
        """`positions` (B, T) gives each token's position in its caption (packed rows); without it
        tokens[:, t] is at position start + t (`start` is the decode step when T == 1)."""
        x = self.projection(self.token_embedding(tokens))
        if self.position_embedding is not None:
            if positions is None:
                positions = ops.arange(ops.shape(tokens)[1], dtype="int32") + ops.cast(start, "int32")
                x = x + ops.expand_dims(self.position_embedding(positions), 0)
            else:
                x = x + self.position_embedding(ops.cast(positions, "int32"))
        return self.dropout_layer(x, training=training)

    def get_config(self):
        config = super().get_config()
        config.update(
            vocab_size=self.vocab_size,
            embedding_dim=self.embedding_dim,
            hidden_dim=self.hidden_dim,
            max_length=self.max_length,
            use_positions=self.use_positions,
            train_embeddings=self.train_embeddings,
            dropout=self.dropout,
        )
        return config
