"""Model stage: the Keras caption model, its layers, and its masked loss."""

from training.models.caption_model import CaptionModel, build_caption_model
from training.models.losses import (
    compile_caption_model,
    masked_accuracy,
    masked_sparse_categorical_crossentropy,
)

__all__ = [
    "CaptionModel",
    "build_caption_model",
    "compile_caption_model",
    "masked_accuracy",
    "masked_sparse_categorical_crossentropy",
]
