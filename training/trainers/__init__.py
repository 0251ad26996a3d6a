"""Training: Trainer, DistributedTrainer, CallbackFactory."""

from training.trainers.trainer import (
    CallbackFactory,
    DistributedTrainer,
    NonFiniteLoss,
    Trainer,
    TrainingInterrupted,
    config_fingerprint,
)

__all__ = [
    "CallbackFactory",
    "DistributedTrainer",
    "NonFiniteLoss",
    "Trainer",
    "TrainingInterrupted",
    "config_fingerprint",
]
