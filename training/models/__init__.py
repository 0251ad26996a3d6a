"""Model stage: the Keras caption model, its layers, its masked loss, and how it is compiled."""

from training.models.caption_model import CaptionModel, build_caption_model
from training.models.losses import masked_accuracy, masked_sparse_categorical_crossentropy
from training.models.optimization import FusedAdam, compile_caption_model

__all__ = [
    "CaptionModel",
    "FusedAdam",
    "build_caption_model",
    "compile_caption_model",
    "masked_accuracy",
    "masked_sparse_categorical_crossentropy",
]
