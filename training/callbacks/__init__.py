"""Keras callbacks of our own: epoch metrics, progress, atomic checkpoints, resumable state."""

from training.callbacks.checkpoint import BestModelCheckpoint, EpochSeeds, ResumeState
from training.callbacks.metrics import MetricsCallback, ProgressCallback

__all__ = ["BestModelCheckpoint", "EpochSeeds", "MetricsCallback", "ProgressCallback", "ResumeState"]
