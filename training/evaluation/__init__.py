"""Evaluation: decode captions for images (greedy, beam search; `inference`, `batches`), score them (BLEU, METEOR,
ROUGE-L, CIDEr; `metrics`, `cider`, `objects`) through one `evaluator`, and write a split's results (`split`).

No names here: scoring captions must not import TensorFlow, nor decoding NLTK; import from the modules.
"""
