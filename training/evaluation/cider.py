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
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

N = 4
SIGMA = 6.0


def _tokens(caption) -> list[str]:
    return caption.split() if isinstance(caption, str) else list(caption)


def ngram_counts(caption, n: int = N) -> Counter:
    words = _tokens(caption)
    return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


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
    def from_references(cls, references: Mapping[str, Sequence] | Sequence[Sequence]) -> CiderD:
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
        penalty = math.exp(-((len_c - len_r) ** 2) / (2 * self.sigma**2))
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


class BatchCiderD:
    """`CiderD.score` of many sampled captions at once, given as word-id arrays: the SCST reward in numpy.

    What makes it fast: the n-grams of in-vocabulary words are numbered once per run (the document
    frequencies become one sorted array), and each image's reference vectors once per image, so a
    batch's rewards are a few array operations (n-grams of all samples by sliding windows, their
    weights and reference matches by `searchsorted`, the sums by `bincount`) instead of dict loops per
    sample. The value is `CiderD.score`'s to rounding: the reference vectors are `CiderD`'s own;
    a reference n-gram with a word outside the vocabulary counts in its norm, and no sample (which
    has only vocabulary words) can match it.

    A sample is a row of word ids: its words, then (optionally) `end_id`, then padding (0).
    """

    def __init__(self, cider: CiderD, words: Sequence[str], end_id: int, references: Mapping[Any, Sequence]):
        self.cider, self.end_id, self.references = cider, int(end_id), references
        self.word_id = {word: index for index, word in enumerate(words)}
        self.base = len(words)  # a k-gram's key: its word ids as the digits of a base-V number
        if self.base**cider.n >= 2**63:
            raise ValueError(f"a vocabulary of {self.base} words is too large for int64 {cider.n}-gram keys")
        grams = [(self._key(gram), frequency) for gram, frequency in cider.df.items() if self._key(gram) is not None]
        grams.sort()
        self.keys = np.array([key for key, _ in grams], np.int64)  # every n-gram the references have, numbered
        self.idf = cider.log_images - np.log(np.maximum(1.0, np.array([f for _, f in grams], np.float64)))
        self.most_refs = max((len(refs) for refs in references.values()), default=1) or 1
        self._tables: dict = {}

    def _key(self, gram: tuple) -> int | None:
        key = 0
        for word in gram:
            index = self.word_id.get(word)
            if not index:  # outside the vocabulary (or padding): no sample can have it
                return None
            key = key * self.base + index
        return key

    def _table(self, image):
        """(gram numbers (K,), weights (K, refs), norms (refs, n), lengths (refs,), reference count) of an image."""
        if image not in self._tables:
            vectors = self.cider._references(self.references[image], key=image)
            keys, refs, weights = [], [], []
            for r, (per_n, _, _) in enumerate(vectors):
                for grams in per_n:
                    for gram, weight in grams.items():
                        key = self._key(gram)
                        if key is not None:  # else a word outside the vocabulary: no sample can match it
                            keys.append(key), refs.append(r), weights.append(weight)
            keys = np.array(keys, np.int64)
            numbers = np.minimum(np.searchsorted(self.keys, keys), max(len(self.keys) - 1, 0))
            known = self.keys[numbers] == keys if len(self.keys) else np.zeros(len(keys), bool)
            grams, row = np.unique(numbers[known], return_inverse=True)
            table = np.zeros((len(grams), self.most_refs))
            table[row, np.array(refs, np.int64)[known]] = np.array(weights)[known]
            norms = np.zeros((self.most_refs, self.cider.n))
            lengths = np.zeros(self.most_refs)
            for r, (_, norm, length) in enumerate(vectors):
                norms[r], lengths[r] = norm, length
            self._tables[image] = (grams, table, norms, lengths, len(vectors))
        return self._tables[image]

    def candidate_grams(self, sequences: np.ndarray):
        """(row, n - 1, gram key, count) of every distinct n-gram of every row, and each row's word count."""
        sequences = np.asarray(sequences, np.int64)
        rows, width = sequences.shape
        ends = (sequences == self.end_id) | (sequences == 0)
        lengths = np.where(ends.any(axis=1), ends.argmax(axis=1), width)
        entries = []
        for k in range(1, self.cider.n + 1):
            if k > width:
                break
            windows = np.lib.stride_tricks.sliding_window_view(sequences, k, axis=1)  # (rows, width - k + 1, k)
            keys = windows @ (self.base ** np.arange(k - 1, -1, -1, dtype=np.int64))
            row, start = np.nonzero(np.arange(width - k + 1)[None] + k <= lengths[:, None])
            entries.append((row, np.full_like(row, k - 1), keys[row, start]))
        row, order, keys = (np.concatenate(parts) for parts in zip(*entries))
        # Distinct (row, key) pairs and their counts (a key's range tells its n: no two n share a key).
        sort = np.lexsort((keys, row))
        row, order, keys = row[sort], order[sort], keys[sort]
        first = np.ones(len(row), bool)
        first[1:] = (row[1:] != row[:-1]) | (keys[1:] != keys[:-1])
        starts = np.flatnonzero(first)
        counts = np.diff(np.append(starts, len(row)))
        return row[starts], order[starts], keys[starts], counts, lengths

    def scores(self, sequences: np.ndarray, images: Sequence) -> np.ndarray:
        """CIDEr-D of each row of `sequences` against the references of `images[row]`."""
        n, most = self.cider.n, self.most_refs
        row, order, keys, counts, lengths = self.candidate_grams(sequences)
        rows = len(lengths)
        found = np.minimum(np.searchsorted(self.keys, keys), max(len(self.keys) - 1, 0))
        known = self.keys[found] == keys if len(self.keys) else np.zeros(len(keys), bool)
        weight = counts * np.where(known, self.idf[found] if len(self.keys) else 0.0, self.cider.log_images)
        norm = np.sqrt(np.bincount(row * n + order, weight * weight, minlength=rows * n)).reshape(rows, n)

        slots = {image: s for s, image in enumerate(dict.fromkeys(images))}  # each image's table once
        tables = [self._table(image) for image in slots]
        slot = np.array([slots[image] for image in images])
        # Every table's gram numbers, offset by slot: one sorted array to match all samples' grams at once.
        span = len(self.keys) + 1
        table_keys = np.concatenate([t[0] + s * span for s, t in enumerate(tables)])
        table_weights = np.concatenate([t[1] for t in tables])
        wanted = slot[row] * span + found
        at = np.minimum(np.searchsorted(table_keys, wanted), max(len(table_keys) - 1, 0))
        hit = known & (table_keys[at] == wanted) if len(table_keys) else np.zeros(len(keys), bool)
        reference = table_weights[at[hit]]  # (hits, refs)
        clipped = np.minimum(weight[hit, None], reference) * reference
        value = np.zeros((rows * n, most))
        np.add.at(value, row[hit] * n + order[hit], clipped)
        value = value.reshape(rows, n, most)

        ref_norms = np.stack([t[2] for t in tables])[slot]  # (rows, refs, n)
        ref_lengths = np.stack([t[3] for t in tables])[slot]  # (rows, refs)
        ref_counts = np.array([t[4] for t in tables])[slot]
        both = (norm[:, :, None] != 0) & (ref_norms.transpose(0, 2, 1) != 0)
        value = np.where(both, value / np.where(both, norm[:, :, None] * ref_norms.transpose(0, 2, 1), 1.0), value)
        penalty = np.exp(-((lengths[:, None] - ref_lengths) ** 2) / (2 * self.cider.sigma**2))
        real = np.arange(most)[None] < ref_counts[:, None]
        total = np.sum(value * (penalty * real)[:, None, :], axis=(1, 2))
        return np.where(ref_counts > 0, 10.0 * total / n / np.maximum(ref_counts, 1), 0.0)
