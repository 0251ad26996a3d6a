"""Keras callbacks of our own: epoch metrics, progress, atomic checkpoints, resumable state."""

from training.callbacks.checkpoint import BestModelCheckpoint, ResumeState
from training.callbacks.metrics import MetricsCallback, ProgressCallback

__all__ = ["BestModelCheckpoint", "MetricsCallback", "ProgressCallback", "ResumeState"]
