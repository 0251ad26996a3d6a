"""Model stage, attention: multi-head attention with cacheable keys/values, and additive attention."""

from __future__ import annotations

import math

import keras
from keras import ops

from training.models.components.dense import Dense
from training.models.components.dropout import Dropout

# Masked scores are set to this finite value (in float32) rather than -inf, so a row with
# no visible key gives a uniform distribution instead of NaN.
_MASKED_SCORE = -1e9


def _softmax(scores):
    if scores.shape[-1] == 1:
        # One key (pooled image features, use_regions=False): the weight is 1 and keras.ops.softmax
        # would warn about the size-1 axis. `0 * scores` keeps the query/key weights connected to
        # the loss (with a zero gradient, as a softmax gives), so Keras does not warn that they have none.
        return ops.ones_like(scores) + 0.0 * scores
    # One fused kernel forward and backward; a written-out exp/sum/divide costs ~10 passes over
    # the (B, heads, T, S) scores, the largest tensors of a training step.
    return ops.softmax(scores, axis=-1)


def attention_bias(visible):
    """Boolean visibility (True = may attend) -> additive float32 bias: 0 where visible, -1e9 elsewhere."""
    return ops.where(visible, 0.0, _MASKED_SCORE)


# Registered under its former name, which .keras files saved before the rename hold.
@keras.saving.register_keras_serializable(package="training", name="MultiHeadCrossAttention")
class CachedMultiHeadAttention(keras.layers.Layer):
    """Scaled dot-product attention over `num_heads` heads, built from plain Dense projections: the
    decoder's self-attention over the caption and its cross-attention over the image regions.

    Keys/values are computed by `key_values` separately from `attend`, so a decoder can
    compute them once (image regions) or append one position at a time (self-attention cache).
    """

    def __init__(self, hidden_dim: int, num_heads: int, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim ({hidden_dim}) must be a multiple of num_heads ({num_heads})")
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.head_dim = hidden_dim // num_heads
        self.query_dense = Dense(hidden_dim, name="query")
        self.key_dense = Dense(hidden_dim, name="key")
        self.value_dense = Dense(hidden_dim, name="value")
        self.output_dense = Dense(hidden_dim, name="output")
        self.weights_dropout = Dropout(dropout)

    def build(self, query_shape, source_shape=None):
        source_shape = query_shape if source_shape is None else source_shape
        self.query_dense.build(query_shape)
        self.key_dense.build(source_shape)
        self.value_dense.build(source_shape)
        self.output_dense.build(tuple(query_shape[:-1]) + (self.hidden_dim,))
        self.built = True

    def _split_heads(self, x):
        # (B, S, D) -> (B, H, S, D/H): heads become a batch axis for the matmuls.
        x = ops.reshape(x, ops.shape(x)[:-1] + (self.num_heads, self.head_dim))
        return ops.transpose(x, (0, 2, 1, 3))

    def key_values(self, source):
        """(B, S, D) -> keys, values, each (B, H, S, D/H)."""
        return self._split_heads(self.key_dense(source)), self._split_heads(self.value_dense(source))

    def attend(self, query, keys, values, attention_mask=None, training=None):
        """query (B, T, D) over keys/values (B, H, S, D/H).

        attention_mask broadcasts to (B, H, T, S), True = visible.

        Returns the output (B, T, D) and the attention weights (B, H, T, S) in float32.
        """
        # Scaling the queries (B, T, D) rather than the scores (B, H, T, S) touches fewer values.
        q = self._split_heads(self.query_dense(query) * (1.0 / math.sqrt(self.head_dim)))
        scores = ops.matmul(q, ops.transpose(keys, (0, 1, 3, 2)))
        # Softmax in float32: float16 cannot hold the masking value and loses precision in exp.
        scores = ops.cast(scores, "float32")
        if attention_mask is not None:
            # An additive bias built at the mask's shape (heads broadcast) costs less than a
            # `where` over the full scores, and its gradient is the identity.
            scores = scores + attention_bias(attention_mask)
        weights = _softmax(scores)
        # Dropped in the compute dtype, after the cast the matmul needs anyway: half the bytes per pass.
        dropped = self.weights_dropout(ops.cast(weights, values.dtype), training=training)
        out = ops.matmul(dropped, values)
        out = ops.transpose(out, (0, 2, 1, 3))
        out = ops.reshape(out, ops.shape(out)[:2] + (self.hidden_dim,))
        return self.output_dense(out), weights

    # Not named `mask`: Keras treats that argument as an automatic (propagated) mask.
    def call(self, query, source, attention_mask=None, training=None):
        keys, values = self.key_values(source)
        return self.attend(query, keys, values, attention_mask=attention_mask, training=training)[0]

    def get_config(self):
        config = super().get_config()
        config.update(hidden_dim=self.hidden_dim, num_heads=self.num_heads, dropout=self.dropout)
        return config


MultiHeadCrossAttention = CachedMultiHeadAttention  # the former name


@keras.saving.register_keras_serializable(package="training")
class BahdanauAttention(keras.layers.Layer):
    """Additive attention: score_r = v . tanh(W_r region_r + W_q query), softmax over regions."""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.region_dense = Dense(units, name="region")
        self.query_dense = Dense(units, name="query")
        self.score_dense = Dense(1, name="score")

    def build(self, query_shape, regions_shape):
        self.region_dense.build(regions_shape)
        self.query_dense.build(query_shape)
        self.score_dense.build(tuple(regions_shape[:-1]) + (self.units,))
        self.built = True

    def region_keys(self, regions):
        """(B, R, D) -> (B, R, units); depends only on the image, so decoders compute it once."""
        return self.region_dense(regions)

    def attend(self, query, region_keys, regions):
        """query (B, Q) -> context (B, D) and weights (B, R) in float32.

        region_keys (B / k, R, units) and regions (B / k, R, D) may hold one image per k
        consecutive queries (beam search: an image's k hypotheses), so they are not repeated k times.
        """
        images = ops.shape(regions)[0]
        grouped = ops.reshape(self.query_dense(query), (images, -1, 1, self.units))  # (images, k, 1, units)
        hidden = ops.tanh(ops.expand_dims(region_keys, 1) + grouped)  # (images, k, R, units)
        scores = ops.cast(ops.squeeze(self.score_dense(hidden), -1), "float32")
        weights = _softmax(scores)  # (images, k, R)
        context = ops.matmul(ops.cast(weights, regions.dtype), regions)  # (images, k, D)
        return ops.reshape(context, (-1, ops.shape(regions)[-1])), ops.reshape(weights, (-1, ops.shape(regions)[1]))

    def call(self, query, regions):
        return self.attend(query, self.region_keys(regions), regions)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units)
        return config
