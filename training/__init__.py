"""Image-captioning training pipeline: captions + images -> a trained attention captioning model."""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy, so that `import training` (and the config tools) do not pay for importing TensorFlow.
    if name == "TrainingPipeline":
        from training.train import TrainingPipeline

        return TrainingPipeline
    if name == "load_config":
        from training.configs import load_config

        return load_config
    raise AttributeError(f"module 'training' has no attribute {name!r}")
