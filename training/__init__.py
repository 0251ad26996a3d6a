"""Image-captioning training pipeline: captions + images -> a trained attention captioning model."""

import os

__version__ = "0.1.0"

# TensorFlow's C++ start-up chatter (oneDNN, CPU features) hides the pipeline's own log; a user's
# own setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def __getattr__(name):
    # Lazy, so that `import training` (and the config tools) do not pay for importing TensorFlow.
    if name == "TrainingPipeline":
        from training.train import TrainingPipeline

        return TrainingPipeline
    if name == "Captioner":  # importing it also registers every Keras class a saved captioner needs
        from training.captioner import Captioner

        return Captioner
    if name == "load_config":
        from training.configs import load_config

        return load_config
    raise AttributeError(f"module 'training' has no attribute {name!r}")
