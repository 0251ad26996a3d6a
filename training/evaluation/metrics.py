"""Scoring stage: generated captions vs reference captions -> BLEU-1..4, METEOR, ROUGE-L and CIDEr.

BLEU comes from NLTK on lowercase whitespace tokens (as the seed computed it); coco_bleu1..4 are
coco-caption's BLEU on the PTB-tokenized text, the figure papers report (they differ: on 500 Flickr8k
images, first reference against the other four, NLTK BLEU-1/4 read 0.673/0.237, coco-caption's
0.651/0.225). METEOR, ROUGE-L and
CIDEr come from pycocoevalcap, the COCO caption toolkit, on text tokenised by its PTB tokenizer, so
the numbers compare with published ones. METEOR and the PTB tokenizer run on Java: without it
METEOR is left out (never estimated) and ROUGE-L and CIDEr run on whitespace tokens, with a warning.

pycocoevalcap's `Cider` is CIDEr-D (clipped n-gram counts, a Gaussian length penalty, x10), with
document frequencies taken from the references being scored: reported here as "cider". On a handful
of images it is not comparable to published figures.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu, sentence_bleu

from training.utils.io import atomic_path

logger = logging.getLogger(__name__)

SPECIAL_WORDS = {"startseq", "endseq"}  # the preprocessor's wrappers: never part of a reference


def strip_wrappers(caption: str) -> str:
    """A cleaned caption without the preprocessor's startseq/endseq."""
    return " ".join(word for word in caption.split() if word not in SPECIAL_WORDS)


def clean_caption(text: str) -> str:
    """Lowercase, single spaces, without startseq/endseq (references often arrive wrapped in them)."""
    return " ".join(word for word in text.lower().split() if word not in SPECIAL_WORDS)


@contextlib.contextmanager
def _no_overlap_warning():
    """Unsmoothed BLEU of captions that share no n-gram with their references is 0, as the metric defines;
    NLTK also warns, at every call (every epoch of an early model), which says nothing the score does not."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="\nThe hypothesis contains 0 counts", category=UserWarning)
        yield


class BLEUScore:
    """BLEU-1..max_n with NLTK: BLEU-n weights the 1..n-gram precisions equally (cumulative BLEU)."""

    SMOOTHINGS = tuple(f"method{i}" for i in range(8))

    def __init__(self, max_n: int = 4, smoothing: str | None = "method1"):
        if smoothing is not None and smoothing not in self.SMOOTHINGS:
            raise ValueError(f"smoothing must be None or one of {', '.join(self.SMOOTHINGS)}; got {smoothing!r}")
        self.max_n = max_n
        self.weights = [tuple([1.0 / n] * n) for n in range(1, max_n + 1)]
        # method1 adds a small count to empty n-gram precisions, so one short caption does not score 0.
        self.smoothing = getattr(SmoothingFunction(), smoothing or "method0")

    def corpus_score(self, references, hypotheses) -> dict[str, float]:
        """references: one list of reference captions per hypothesis, or {image_id: [caption, ...]} with
        hypotheses {image_id: caption}; a caption is a string (split on whitespace) or a list of tokens."""
        refs, hyps = self._tokens(references, hypotheses)
        with _no_overlap_warning():
            scores = corpus_bleu(refs, hyps, weights=self.weights, smoothing_function=self.smoothing)
        return self._named(scores)

    def sentence_scores(self, references, hypotheses) -> list[dict[str, float]]:
        """BLEU-1..max_n of each hypothesis on its own, in the order of `hypotheses`."""
        refs, hyps = self._tokens(references, hypotheses)
        with _no_overlap_warning():
            return [
                self._named(sentence_bleu(r, h, weights=self.weights, smoothing_function=self.smoothing))
                for r, h in zip(refs, hyps)
            ]

    def _named(self, scores) -> dict[str, float]:
        return {f"bleu{n}": float(score) for n, score in enumerate(scores, start=1)}

    @staticmethod
    def _tokens(references, hypotheses):
        def split(caption):
            return caption.lower().split() if isinstance(caption, str) else list(caption)

        if isinstance(hypotheses, Mapping):
            references = [references[image_id] for image_id in hypotheses]
            hypotheses = list(hypotheses.values())
        if len(references) != len(hypotheses):
            raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
        return [[split(r) for r in refs] for refs in references], [split(h) for h in hypotheses]


def coco_bleu(gts: Mapping[str, list[str]], res: Mapping[str, list[str]]) -> dict[str, float]:
    """coco_bleu1..4: coco-caption's BLEU (pycocoevalcap `Bleu(4)`, closest reference length), the BLEU of papers."""
    from pycocoevalcap.bleu.bleu import Bleu

    values, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {f"coco_bleu{n}": float(v) for n, v in enumerate(values, start=1)}


class CaptionEvaluator:
    """Scores predicted captions against references; keeps per-image scores for a CSV report."""

    METRICS = ("bleu", "meteor", "rouge_l", "cider", "coco_bleu")

    def __init__(self, metrics: Sequence[str] = METRICS):
        unknown = [m for m in metrics if m not in self.METRICS]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; choose from {', '.join(self.METRICS)}")
        self.metrics = tuple(metrics)
        self.per_image: list[dict] = []

    def evaluate(self, predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, float]:
        """Corpus scores over the images of `predictions`; every one of them needs references.

        startseq/endseq are stripped from references and predictions alike, and all text is lowercased.
        """
        image_ids = list(predictions)
        if not image_ids:
            raise ValueError("no predictions to evaluate")
        missing = [image_id for image_id in image_ids if not references.get(image_id)]
        if missing:
            raise ValueError(f"{len(missing)} predicted images have no reference captions, e.g. {missing[:3]}")
        hyps = {i: clean_caption(predictions[i]) for i in image_ids}
        refs = {i: [clean_caption(r) for r in references[i]] for i in image_ids}
        scores: dict[str, float] = {}
        rows = {i: {"image_id": i, "prediction": hyps[i]} for i in image_ids}

        if "bleu" in self.metrics:
            # Corpus BLEU unsmoothed, the standard figure; per-image BLEU smoothed, or short captions all read 0.
            scores.update(BLEUScore(smoothing=None).corpus_score(refs, hyps))
            for i, image_scores in zip(image_ids, BLEUScore(smoothing="method1").sentence_scores(refs, hyps)):
                rows[i].update(image_scores)

        if any(m != "bleu" for m in self.metrics):
            java = shutil.which("java") is not None
            if not java:
                logger.warning(
                    "java not found: METEOR skipped; ROUGE-L and CIDEr on whitespace tokens, "
                    "not the COCO PTB tokenizer (install a JRE for the standard figures)"
                )
            # Meteor's JVM spends seconds loading its paraphrase table: start it first, ask it last.
            names = [m for m in ("meteor", "rouge_l", "cider") if m in self.metrics and (java or m != "meteor")]
            scorers = {name: self._coco_scorer(name) for name in names}
            gts, res = self._coco_tokens(refs, hyps, java)
            if "coco_bleu" in self.metrics:
                scores.update(coco_bleu(gts, res))
            for name in sorted(names, key="meteor".__eq__):
                score, image_scores = scorers[name].compute_score(gts, res)
                scores[name] = float(score)
                for i, image_score in zip(image_ids, image_scores):
                    rows[i][name] = float(image_score)

        self.per_image = [rows[i] for i in image_ids]
        return scores

    def write_per_image_csv(self, path: str | Path) -> Path:
        """Write `per_image` (one row per image: id, prediction, scores) to `path`, atomically."""
        if not self.per_image:
            raise RuntimeError("no per-image scores yet: call evaluate() first")
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(self.per_image[0]))
            writer.writeheader()
            writer.writerows(self.per_image)
        return Path(path)

    @staticmethod
    def _coco_tokens(refs, hyps, java: bool):
        """pycocoevalcap's input: {image_id: [caption, ...]}, PTB-tokenised when Java is there."""
        if not java:
            return refs, {i: [h] for i, h in hyps.items()}
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        tokenizer = PTBTokenizer()
        gts = tokenizer.tokenize({i: [{"caption": r} for r in rs] for i, rs in refs.items()})
        res = tokenizer.tokenize({i: [{"caption": h}] for i, h in hyps.items()})
        return gts, res

    @staticmethod
    def _coco_scorer(name):
        # Imported on use: Meteor starts a JVM as soon as it is constructed.
        if name == "meteor":
            from pycocoevalcap.meteor.meteor import Meteor

            return Meteor()
        if name == "rouge_l":
            from pycocoevalcap.rouge.rouge import Rouge

            return Rouge()
        from pycocoevalcap.cider.cider import Cider

        return Cider()
