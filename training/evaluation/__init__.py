"""Evaluation stage: decode captions for images (greedy, beam search) and score them (BLEU, METEOR, ROUGE-L, CIDEr)."""

from training.lazy import lazy_names

# Lazy, so that scoring captions does not import TensorFlow and decoding does not import NLTK.
_EXPORTS = {
    "Caption": "inference",
    "GreedyDecoder": "inference",
    "BeamSearchDecoder": "inference",
    "BLEUScore": "metrics",
    "CaptionEvaluator": "metrics",
}
__all__ = list(_EXPORTS)

__getattr__ = lazy_names(__name__, _EXPORTS)
