"""Model stage, layers: attention, projections, embeddings and decoder cores."""

from training.models.components.attention import BahdanauAttention, MultiHeadCrossAttention
from training.models.components.dropout import Dropout
from training.models.components.encoders import (
    ImageProjection,
    LSTMEncoder,
    TextEmbedding,
    TransformerDecoderBlock,
)

__all__ = [
    "BahdanauAttention",
    "ImageProjection",
    "LSTMEncoder",
    "MultiHeadCrossAttention",
    "TextEmbedding",
    "TransformerDecoderBlock",
]
