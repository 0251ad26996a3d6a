"""Evaluation: decode captions for images (greedy, beam search; `inference`, `batches`), score them (BLEU, METEOR,
ROUGE-L, CIDEr; `metrics`, `cider`; whether they are right about the image: `objects`, `chair`; whether they
collapse: `diversity`) through one `evaluator`, and write a split's results (`split`).

No names here: scoring captions must not import TensorFlow, nor decoding NLTK; import from the modules.
"""
