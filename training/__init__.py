"""Image-captioning training pipeline: captions + images -> a trained attention captioning model."""

import os

__version__ = "0.1.0"

# TensorFlow's C++ start-up chatter (oneDNN, CPU features) hides the pipeline's own log; a user's
# own setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow's default CPU allocator returns large freed tensors to the kernel, so every step faults its
# buffers in afresh; its BFC allocator keeps and reuses them. An SCST step on W1 shapes under Keras' fit had
# ~150k minor page faults and took 800-930 ms with the default, ~60k and 570-630 ms with BFC; cross-entropy
# epochs took as long either way (bench/RESULTS.md). Read when TensorFlow first allocates: it holds for
# processes that import this package before running TensorFlow. A user's own setting wins. BFC caps
# TensorFlow's CPU tensors at 64 GB in all unless TF_CPU_BFC_MEM_LIMIT_IN_MB says otherwise. Where TensorFlow runs
# oneDNN (CPUs with AVX512-VNNI, -BF16 or AMX), its CPU allocator already pools, whatever this says.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")


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
