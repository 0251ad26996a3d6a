"""The evaluator: image features in, captions and their scores out. It writes nothing and prints nothing.

Per-epoch validation (val_bleu4, val_cider), the SCST stage's validation, `training.evaluate` and a run's
final test scores all caption and score through an `Evaluator`; what each does with the result (the
epoch's logs, the predictions file, the per-image rows, the console) is up to it (see
`training.evaluation.split`).

Two sets of scores: `score` is the quick one a training loop asks every epoch (greedy captions, NLTK
BLEU-4 and our CIDEr-D, no Java; the distinct share and vocabulary of the captions; with a grounding,
object precision and recall); `evaluate` gives the full one (beam search; BLEU, METEOR, ROUGE-L,
CIDEr, coco-caption BLEU, the distinct share, and the grounding's scores: object scores against a
scenes file, or CHAIR against COCO instance annotations).

A grounding is what says whether captions are right about their images: `ObjectMentions` (a scenes
file) or `CocoObjects` (COCO instances, `training.evaluation.chair`); `load_grounding` makes the one
a config asks for.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from training.evaluation.batches import decode_in_batches
from training.evaluation.cider import CiderD
from training.evaluation.diversity import diversity
from training.evaluation.metrics import BLEUScore, CaptionEvaluator, strip_wrappers

if TYPE_CHECKING:  # decoding imports TensorFlow, on first use: a command's --help or bad argument never starts it
    from training.evaluation.inference import BeamSearchDecoder, Caption


@dataclass
class Evaluation:
    """A model's captions of the evaluator's images and their scores."""

    image_ids: list[str]
    captions: list[Caption]  # one per image, with the attention that produced each word
    references: list[list[str]]  # per image, without startseq/endseq
    beam_size: int
    scores: dict[str, float]  # corpus scores; a metric with nothing to count is None
    per_image: list[dict]  # per image: image_id, prediction, and its own scores


def split_images(builder, captions: dict[str, list[str]], max_images: int | None = None):
    """(features, references) of the first `max_images` images of `captions`, features read by `builder`."""
    image_ids = list(captions)[:max_images]
    return (builder.image_features(image_ids) if image_ids else None), {i: captions[i] for i in image_ids}


class Evaluator:
    """Captions and scores models on fixed images: `features` (images, regions, channels) and their
    `references` ({image_id: [caption, ...]}, in the order of the features' rows).

    Images are decoded `batch_size` at a time, padded as the Captioner pads them (`training.evaluation.batches`),
    by one decoder per model, beam size and padded size: its compiled search is traced once and reused every epoch.
    """

    def __init__(self, tokenizer, features, references: dict[str, list[str]], batch_size: int = 64, grounding=None):
        self.tokenizer, self.features, self.batch_size = tokenizer, features, int(batch_size)
        self.grounding = grounding  # ObjectMentions or CocoObjects: whether captions are right about the image
        self.image_ids = list(references)
        self.references = [[strip_wrappers(c) for c in references[i]] for i in self.image_ids]
        self._decoders: dict[tuple[int, int, int], BeamSearchDecoder] = {}  # (model, beam size, padded batch size)
        self._scores: dict[str, dict[str, float]] = {}  # weights digest -> quick scores

    def __len__(self) -> int:
        return len(self.image_ids)

    def caption(self, model, beam_size: int = 1) -> list[Caption]:
        """`model`'s captions of the images, greedy (beam_size 1) or by beam search."""
        from training.evaluation.inference import BeamSearchDecoder

        def decoder_of(size: int) -> BeamSearchDecoder:
            key = (id(model), int(beam_size), size)
            if key not in self._decoders:
                self._decoders[key] = BeamSearchDecoder(model, self.tokenizer, beam_size=key[1], batch_size=size)
            return self._decoders[key]

        return decode_in_batches(decoder_of, self.features, self.batch_size)

    def score(self, model) -> dict[str, float]:
        """val_bleu4, val_cider, val_distinct_share and val_vocab_used of `model`'s greedy captions, and with a
        grounding val_object_precision and val_object_recall (NaN when nothing was counted: no caption names
        an object; such an epoch is never the best one).

        BLEU-4 is NLTK's corpus BLEU (as `bleu4` of `evaluate`); CIDEr-D takes its document frequencies
        from the references being scored, as `cider` does. A model with the weights of one scored before
        (the best checkpoint, loaded again for the next stage) gets that one's scores: decoding again
        would trace another search for the same captions."""
        digest = weights_digest(model)
        if digest not in self._scores:
            texts = [c.text for c in self.caption(model)]
            bleu = BLEUScore(smoothing=None).corpus_score(self.references, texts)["bleu4"]
            cider, _ = CiderD.corpus_score(texts, self.references)
            values = {"val_bleu4": float(bleu), "val_cider": float(cider), **diversity(texts)}
            if self.grounding is not None:
                values.update(self.grounding.precision_recall(dict(zip(self.image_ids, texts))))
            self._scores[digest] = {
                (k if k.startswith("val_") else f"val_{k}"): float("nan") if v is None else float(v) for k, v in values.items()
            }
        return dict(self._scores[digest])

    def evaluate(self, model, beam_size: int = 1, grounding=None) -> Evaluation:
        """`model`'s captions and the full scores; with a grounding (this evaluator's unless given), also whether the
        captions are right about the image (against the scenes, or COCO's instances)."""
        captions = self.caption(model, beam_size)
        predictions = {image_id: c.text for image_id, c in zip(self.image_ids, captions)}
        scorer = CaptionEvaluator()
        scores = scorer.evaluate(predictions, dict(zip(self.image_ids, self.references)))
        scores.update(diversity(list(predictions.values())))
        grounding = grounding if grounding is not None else self.grounding
        if grounding is not None:
            scores.update(grounding.score(predictions))
        return Evaluation(self.image_ids, captions, self.references, int(beam_size), scores, scorer.per_image)


def load_grounding(data_config, references: dict[str, list[str]] | None = None):
    """The grounding `data_config` asks for: ObjectMentions of its scenes_file, CocoObjects of its
    coco_instances_file (whose images' `references` also name objects, as CHAIR counts them), or None."""
    if data_config.scenes_file:
        from training.evaluation.objects import ObjectMentions, load_scenes

        return ObjectMentions(load_scenes(data_config.scenes_file))
    if data_config.coco_instances_file:
        from training.evaluation.chair import CocoObjects

        return CocoObjects.load(data_config.coco_instances_file, references or {})
    return None


def weights_digest(model) -> str:
    """A hash of the model's weights: milliseconds, next to the seconds of a decode."""
    digest = hashlib.blake2b(digest_size=16)
    for weight in model.weights:
        digest.update(np.ascontiguousarray(np.asarray(weight)).tobytes())
    return digest.hexdigest()
