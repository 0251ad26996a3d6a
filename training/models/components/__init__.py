"""Model stage, layers: attention, projections, input encoders and decoder cores."""

from training.models.components.attention import BahdanauAttention, CachedMultiHeadAttention, MultiHeadCrossAttention
from training.models.components.decoders import LSTMAttentionDecoder, LSTMEncoder, TransformerDecoderBlock
from training.models.components.dense import Dense
from training.models.components.dropout import Dropout
from training.models.components.encoders import ImageProjection, TextEmbedding
from training.models.components.normalization import LayerNormalization

__all__ = [
    "BahdanauAttention",
    "CachedMultiHeadAttention",
    "Dense",
    "Dropout",
    "ImageProjection",
    "LayerNormalization",
    "LSTMAttentionDecoder",
    "LSTMEncoder",
    "MultiHeadCrossAttention",
    "TextEmbedding",
    "TransformerDecoderBlock",
]
