"""Evaluation stage: decode captions for images (greedy, beam search) and score them (BLEU, METEOR, ROUGE-L, CIDEr)."""

# Lazy, so that scoring captions does not import TensorFlow and decoding does not import NLTK.
_EXPORTS = {
    "Caption": "inference",
    "GreedyDecoder": "inference",
    "BeamSearchDecoder": "inference",
    "BLEUScore": "metrics",
    "CaptionEvaluator": "metrics",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'training.evaluation' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"training.evaluation.{_EXPORTS[name]}"), name)
