"""Image-captioning training pipeline: captions + images -> a trained attention captioning model."""

import os

__version__ = "0.1.0"

# TensorFlow's C++ start-up chatter (oneDNN, CPU features) hides the pipeline's own log; a user's
# own setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def load_model(path, **kwargs):
    """keras.saving.load_model for this package's .keras files (a run's models, a captioner), in any process.

    Importing the package's Keras classes registers them; plain keras.saving.load_model works once they are.
    """
    import keras

    import training.captioner  # noqa: F401 - registers the caption model's and the captioner's classes

    return keras.saving.load_model(path, **kwargs)


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
