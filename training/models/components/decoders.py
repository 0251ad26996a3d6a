"""Model stage, decoder cores: the Transformer decoder block (default architecture) and
`LSTMAttentionDecoder`, the LSTM with additive attention (`LSTMEncoder`, the seed's name for it,
stays an alias whose registered name old .keras files hold).

Each core has a `call` for whole sequences (training) and a `decode_step` / `step` for one
position (inference with a cache).
"""

from __future__ import annotations

import keras
from keras import ops

from training.models.components.attention import BahdanauAttention, CachedMultiHeadAttention
from training.models.components.dense import Dense
from training.models.components.dropout import Dropout
from training.models.components.normalization import LayerNormalization


def gelu(x):
    """The exact GELU, x * Phi(x), written with erf: the same function as keras.activations.gelu, whose
    TensorFlow version uses erfc, many times slower than erf on bfloat16 on CPU (figures: bench/RESULTS.md, "Choices in the code")."""
    half = ops.cast(0.5, x.dtype)
    return x * (half + half * ops.erf(x * ops.cast(0.7071067811865476, x.dtype)))


@keras.saving.register_keras_serializable(package="training")
class TransformerDecoderBlock(keras.layers.Layer):
    """Pre-LN decoder block: causal self-attention, cross-attention over regions, feed-forward."""

    def __init__(self, hidden_dim: int, num_heads: int, ff_dim: int, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.ff_dim = ff_dim
        self.dropout = dropout
        self.self_norm = LayerNormalization(epsilon=1e-5, name="self_norm")
        self.self_attention = CachedMultiHeadAttention(hidden_dim, num_heads, dropout, name="self_attention")
        self.cross_norm = LayerNormalization(epsilon=1e-5, name="cross_norm")
        self.cross_attention = CachedMultiHeadAttention(hidden_dim, num_heads, dropout, name="cross_attention")
        self.ff_norm = LayerNormalization(epsilon=1e-5, name="ff_norm")
        self.ff_in = Dense(ff_dim, name="ff_in")  # then `gelu`
        self.ff_out = Dense(hidden_dim, name="ff_out")
        self.dropout_layer = Dropout(dropout)

    def build(self, x_shape, regions_shape):
        """Named after `call`'s arguments, so that a first call builds the block (Keras matches them by name)."""
        for norm in (self.self_norm, self.cross_norm, self.ff_norm):
            norm.build(x_shape)
        self.self_attention.build(x_shape, x_shape)
        self.cross_attention.build(x_shape, regions_shape)
        self.ff_in.build(x_shape)
        self.ff_out.build(tuple(x_shape[:-1]) + (self.ff_dim,))
        self.built = True

    def _feed_forward(self, x, training=None):
        hidden = self.dropout_layer(gelu(self.ff_in(self.ff_norm(x))), training=training)
        return x + self.dropout_layer(self.ff_out(hidden), training=training)

    def call(self, x, regions, self_mask=None, training=None):
        """x (B, T, D), regions (B, R, D); self_mask (B, 1, T, T), True = visible."""
        h = self.self_norm(x)
        attended = self.self_attention(h, h, attention_mask=self_mask, training=training)
        x = x + self.dropout_layer(attended, training=training)
        h = self.cross_norm(x)
        x = x + self.dropout_layer(self.cross_attention(h, regions, training=training), training=training)
        return self._feed_forward(x, training)

    def decode_step(self, x, region_kv, cache_kv):
        """One position: x (B, 1, D); cache_kv holds the (B, H, steps so far, D/H) keys and values;
        region_kv (B / k, H, R, D/H) for k rows per image (k divides B).

        Returns the new x, the updated (keys, values) buffers and the cross-attention
        weights (B, H, 1, R).
        """
        h = self.self_norm(x)
        new_keys, new_values = self.self_attention.key_values(h)
        # The cache grows by one position per step: appending copies only the steps so far, and
        # attention reads only them (a buffer of max_length slots written in place cost ~3 passes
        # over all its slots per step, most of them masked out).
        keys, values = (
            ops.concatenate([cached, ops.cast(new, cached.dtype)], axis=2)
            for cached, new in zip(cache_kv, (new_keys, new_values))
        )
        out, _ = self.self_attention.attend(h, keys, values, training=False)
        x = x + out
        # region_kv may hold one image per k consecutive rows (beam search: its k hypotheses). The
        # k rows then attend as k queries of that image, so its keys/values are read once, not k times.
        images = ops.shape(region_kv[0])[0]
        grouped = ops.reshape(self.cross_norm(x), (images, -1, self.hidden_dim))  # (images, k, D)
        out, weights = self.cross_attention.attend(grouped, *region_kv, training=False)
        x = x + ops.reshape(out, ops.shape(x))
        weights = ops.reshape(ops.transpose(weights, (0, 2, 1, 3)), (-1, self.num_heads, 1, ops.shape(weights)[-1]))
        return self._feed_forward(x, training=False), (keys, values), weights

    def get_config(self):
        config = super().get_config()
        config.update(hidden_dim=self.hidden_dim, num_heads=self.num_heads, ff_dim=self.ff_dim, dropout=self.dropout)
        return config


@keras.saving.register_keras_serializable(package="training")
class LSTMAttentionDecoder(keras.layers.Layer):
    """LSTM decoder core with Bahdanau attention (architecture 'lstm_attention').

    At each step the previous hidden state attends over the regions, and [word; context]
    feeds an LSTMCell. The initial state is zeros, so step 0's attention depends on the
    image alone.
    """

    def __init__(self, hidden_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.attention = BahdanauAttention(hidden_dim, name="attention")
        self.cell = keras.layers.LSTMCell(hidden_dim, name="cell")

    def build(self, words_shape, regions_shape):
        self.attention.build((None, self.hidden_dim), regions_shape)
        self.cell.build((None, words_shape[-1] + regions_shape[-1]))
        self.built = True

    def initial_state(self, batch_size):
        zeros = ops.zeros((batch_size, self.hidden_dim), dtype=self.compute_dtype)
        return zeros, zeros

    def step(self, word, state, regions, region_keys):
        """word (B, E), state (h, c) -> new (h, c) and attention weights (B, R) float32."""
        h, c = state
        context, weights = self.attention.attend(h, region_keys, regions)
        _, (h, c) = self.cell(ops.concatenate([word, ops.cast(context, word.dtype)], axis=-1), [h, c])
        return (h, c), weights

    def call(self, words, regions, token_mask=None, starts=None):
        """words (B, T, E), regions (B, R, D), token_mask (B, T) True = real token -> (B, T, hidden_dim).

        starts (B, T) True where a new caption begins (packed rows): the state restarts from zeros there.
        """
        region_keys = self.attention.region_keys(regions)
        if token_mask is None:
            token_mask = ops.ones(ops.shape(words)[:2], dtype="bool")
        if starts is None:
            starts = ops.zeros(ops.shape(words)[:2], dtype="bool")

        def body(state, inputs):
            word, keep, start = inputs[:, :-2], inputs[:, -2] > 0.5, inputs[:, -1] > 0.5
            start = ops.expand_dims(start, -1)
            state = tuple(ops.where(start, ops.zeros_like(s), s) for s in state)
            new_state, _ = self.step(word, state, regions, region_keys)
            # Padding leaves the state untouched, as keras.layers.RNN masking would.
            keep = ops.expand_dims(keep, -1)
            new_state = tuple(ops.where(keep, new, old) for new, old in zip(new_state, state))
            # keras.ops.scan's TensorFlow version requires per-step outputs shaped like the carry.
            return new_state, new_state

        # One stacked input, not a tuple: Keras' TensorFlow scan fails on a tuple whose time axis is
        # unknown (batches padded to their own length).
        flags = ops.stack([ops.cast(token_mask, words.dtype), ops.cast(starts, words.dtype)], axis=-1)
        time_major = ops.transpose(ops.concatenate([words, flags], axis=-1), (1, 0, 2))
        _, (hidden, _) = ops.scan(body, self.initial_state(ops.shape(words)[0]), time_major)
        return ops.transpose(hidden, (1, 0, 2))

    def get_config(self):
        config = super().get_config()
        config.update(hidden_dim=self.hidden_dim)
        return config


@keras.saving.register_keras_serializable(package="training")
class LSTMEncoder(LSTMAttentionDecoder):
    """LSTMAttentionDecoder under the seed's name, which CaptionModel builds: Keras stores a model's layers'
    weights under their class names (`layers/lstm_encoder/...` in a .keras file), so a file saved with
    either class loads into the other only if the name stays."""
