"""CIDEr-D in Python, without Java: the score pycocoevalcap's `Cider` computes, and the SCST reward.

CIDEr-D (Vedantam et al. 2015, as coco-caption implements it): TF-IDF vectors of 1..4-grams,
the candidate's counts clipped by each reference's, a Gaussian penalty on the length difference
(sigma 6), the cosine-like similarities averaged over references and n, times 10.

Document frequencies come from one of two sources:
- `CiderD.corpus_score(candidates, references)` takes them from the references being scored, as
  pycocoevalcap does: the figure reported for a split (equal to `Cider().compute_score`).
- `CiderD(document_frequencies=...)` fixes them once, e.g. from the training split
  (`CiderD.from_references(train_references)`), so a caption's reward does not depend on which
  other images share its batch: the SCST reward.

Captions are token lists or strings split on whitespace (the project's cleaned captions).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Iterable, Mapping, Sequence

N = 4
SIGMA = 6.0


def _tokens(caption) -> list[str]:
    return caption.split() if isinstance(caption, str) else list(caption)


def ngram_counts(caption, n: int = N) -> Counter:
    words = _tokens(caption)
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def document_frequencies(references: Iterable[Sequence]) -> Counter:
    """In how many images' reference sets each n-gram occurs (an image counts once)."""
    frequencies: Counter = Counter()
    for refs in references:
        frequencies.update(set().union(*(ngram_counts(r) for r in refs)) if refs else ())
    return frequencies


class CiderD:
    """CIDEr-D with fixed document frequencies over `images` reference sets."""

    def __init__(self, document_frequencies: Mapping[tuple, int], images: int, n: int = N, sigma: float = SIGMA):
        if images < 1:
            raise ValueError("document frequencies need at least one image's references")
        self.df, self.n, self.sigma = document_frequencies, n, sigma
        self.log_images = math.log(float(images))
        self._reference_cache: dict = {}

    @classmethod
    def from_references(cls, references: Mapping[str, Sequence] | Sequence[Sequence]) -> "CiderD":
        """Document frequencies of these reference sets (e.g. the training split's captions per image)."""
        sets = list(references.values()) if isinstance(references, Mapping) else list(references)
        return cls(document_frequencies(sets), len(sets))

    @classmethod
    def corpus_score(cls, candidates: Sequence, references: Sequence[Sequence]) -> tuple[float, list[float]]:
        """(mean, per-candidate scores) with document frequencies of `references`: pycocoevalcap's Cider."""
        if len(candidates) != len(references):
            raise ValueError(f"{len(candidates)} candidates but {len(references)} reference sets")
        scorer = cls.from_references(references)
        scores = [scorer.score(c, refs) for c, refs in zip(candidates, references)]
        return (sum(scores) / len(scores) if scores else 0.0), scores

    # -- the score -----------------------------------------------------------------------------------
    def _vector(self, counts: Counter):
        """TF-IDF weights per n (dicts), their norms, and the caption length."""
        vectors = [dict() for _ in range(self.n)]
        norms = [0.0] * self.n
        for gram, count in counts.items():
            k = len(gram) - 1
            weight = float(count) * (self.log_images - math.log(max(1.0, float(self.df.get(gram, 0.0)))))
            vectors[k][gram] = weight
            norms[k] += weight * weight
        length = sum(count for gram, count in counts.items() if len(gram) == 1)
        return vectors, [math.sqrt(v) for v in norms], length

    def _similarity(self, candidate, reference) -> list[float]:
        (vec_c, norm_c, len_c), (vec_r, norm_r, len_r) = candidate, reference
        penalty = math.exp(-((len_c - len_r) ** 2) / (2 * self.sigma ** 2))
        values = []
        for k in range(self.n):
            value = sum(min(w, vec_r[k].get(g, 0.0)) * vec_r[k].get(g, 0.0) for g, w in vec_c[k].items())
            if norm_c[k] != 0 and norm_r[k] != 0:
                value /= norm_c[k] * norm_r[k]
            values.append(value * penalty)
        return values

    def _references(self, references: Sequence, key=None):
        if key is not None and key in self._reference_cache:
            return self._reference_cache[key]
        vectors = [self._vector(ngram_counts(r, self.n)) for r in references]
        if key is not None:
            self._reference_cache[key] = vectors
        return vectors

    def score(self, candidate, references: Sequence, key=None) -> float:
        """CIDEr-D of one caption against its image's references; `key` (e.g. the image id) caches their vectors."""
        refs = self._references(references, key)
        if not refs:
            return 0.0
        vector = self._vector(ngram_counts(candidate, self.n))
        total = [0.0] * self.n
        for ref in refs:
            total = [t + s for t, s in zip(total, self._similarity(vector, ref))]
        return 10.0 * (sum(total) / self.n) / len(refs)
