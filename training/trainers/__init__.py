"""Training: the epoch engine every stage runs through, Trainer, DistributedTrainer, CallbackFactory."""

from training.trainers.engine import NonFiniteLoss, TrainingInterrupted
from training.trainers.trainer import CallbackFactory, DistributedTrainer, Trainer

__all__ = [
    "CallbackFactory",
    "DistributedTrainer",
    "NonFiniteLoss",
    "Trainer",
    "TrainingInterrupted",
]
