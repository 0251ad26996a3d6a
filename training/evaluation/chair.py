"""CHAIR (Rohrbach et al. 2018): how often captions name COCO objects that are not in the image.

With COCO instance annotations (`coco_instances_file`: an instances_*.json), an image's objects are the
categories of its annotated instances and those its reference captions name, as CHAIR counts them. A
caption names an object with a word or phrase of `coco_synonyms.txt` (the standard lists: the 80 COCO
categories, their synonyms and plurals), read left to right, the longest phrase first: "a hot dog" names
a hot dog, not a dog; "a baby elephant" an elephant, not a person.

- chair_i: mentions of objects not in the image / all mentions (CHAIR-i; 1 - chair_i is object precision);
- chair_s: captions with at least one such mention / all captions (CHAIR-s);
- object_recall: the image's objects its caption names / the image's objects (each category once).
Summed over all images before dividing; None when nothing was counted. Unlike Rohrbach et al.'s script,
words are not lemmatised (the lists hold the plurals) and "the seat of the toilet" still names a chair.

The pipeline's image ids are file names: each is matched to an `images[].file_name` of the annotations,
else by the number that ends it to an `images[].id` (COCO_val2014_000000391895.jpg and 000000391895.jpg
are image 391895), so the 2014 and 2017 annotations both serve.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from training.errors import UserInputError

SYNONYMS_FILE = Path(__file__).with_name("coco_synonyms.txt")
NO_OBJECT = "-"  # the synonyms file's name for phrases that name no COCO object


def read_synonyms(path: str | Path = SYNONYMS_FILE) -> dict[tuple[str, ...], str | None]:
    """{phrase (its words): category, or None for a phrase that names no object} from `category: word, ...` lines."""
    phrases: dict[tuple[str, ...], str | None] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            category, _, words = line.partition(":")
            for phrase in words.split(","):
                phrases[tuple(phrase.split())] = None if category.strip() == NO_OBJECT else category.strip()
    return phrases


class CocoObjects:
    """The COCO objects of each image (`objects`: image id -> category names), and the mentions of captions."""

    def __init__(self, objects: Mapping[str, set[str]], phrases: dict[tuple[str, ...], str | None] | None = None):
        self.objects = objects
        self.phrases = phrases if phrases is not None else read_synonyms()
        self.longest = max(len(p) for p in self.phrases)
        self.first_words = {p[0] for p in self.phrases}  # most words start no phrase: one set lookup each

    @classmethod
    def load(cls, path: str | Path, references: Mapping[str, list[str]]) -> CocoObjects:
        """The objects of every image of `references` ({image_id: [caption, ...]}): its instances in `path`, and
        what its captions name. A file that is no COCO instances file, or lacks one of the images, is refused."""
        path, phrases = Path(path), read_synonyms()
        fix = "point 'coco_instances_file' at the COCO instances_*.json of these images"
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            names = {c["id"]: c["name"] for c in raw["categories"]}
            by_file = {Path(i["file_name"]).name: i["id"] for i in raw["images"]}
            instances: dict = {}
            for a in raw["annotations"]:
                instances.setdefault(a["image_id"], set()).add(names[a["category_id"]])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise UserInputError(f"{path}: not a COCO instances file ({type(error).__name__}: {error}); {fix}") from None
        unknown = sorted(set(names.values()) - set(phrases.values()))
        if unknown:
            raise UserInputError(f"{path}: categories {unknown[:5]} are not COCO's 80 (see {SYNONYMS_FILE.name}); {fix}")
        ids = set(by_file.values())
        found = {image_id: _annotation_id(image_id, by_file, ids) for image_id in references}
        missing = [image_id for image_id, found_id in found.items() if found_id is None]
        if missing:
            raise UserInputError(f"{path}: {len(missing)} of the run's images are not in its images[], e.g. {missing[:3]}; {fix}")
        return cls.of(references, {image_id: instances.get(found[image_id], set()) for image_id in references}, phrases)

    @classmethod
    def of(
        cls, references: Mapping[str, list[str]], annotated: Mapping[str, set[str]] | None = None, phrases=None
    ) -> CocoObjects:
        """Each image's objects: those `annotated` (its instances' categories) and those its `references` name."""
        coco = cls({}, phrases)
        coco.objects = {
            image_id: set((annotated or {}).get(image_id, ())) | {c for r in captions for c in coco.mentions(r.split())}
            for image_id, captions in references.items()
        }
        return coco

    def mentions(self, words: list[str]) -> list[str]:
        """The categories `words` name, in order, a mention per phrase (read left to right, longest phrase first)."""
        found, i = [], 0
        while i < len(words):
            if words[i] not in self.first_words:
                i += 1
                continue
            for n in range(min(self.longest, len(words) - i), 0, -1):
                phrase = tuple(words[i : i + n])
                if phrase in self.phrases:
                    if self.phrases[phrase]:
                        found.append(self.phrases[phrase])
                    i += n
                    break
            else:
                i += 1
        return found

    def counts(self, image_ids: list[str], captions: list[str]) -> np.ndarray:
        """Per caption: (mentions, mentions of objects in the image, image objects named, image objects)."""
        missing = [i for i in image_ids if i not in self.objects]
        if missing:
            raise UserInputError(f"{len(missing)} images have no objects from coco_instances_file, e.g. {missing[:3]}")
        rows = []
        for image_id, caption in zip(image_ids, captions):
            named, present = self.mentions(caption.lower().split()), self.objects[image_id]
            rows.append((len(named), sum(c in present for c in named), len(present & set(named)), len(present)))
        return np.array(rows, np.int64).reshape(-1, 4)

    def score(self, predictions: Mapping[str, str]) -> dict[str, float | None]:
        """chair_i, chair_s and object_recall of `predictions` ({image_id: caption})."""
        counts = self.counts(list(predictions), list(predictions.values()))
        mentioned, right, named, shown = counts.sum(axis=0)
        return {
            "chair_i": float(1 - right / mentioned) if mentioned else None,
            "chair_s": float(np.mean(counts[:, 1] < counts[:, 0])) if len(counts) else None,
            "object_recall": float(named / shown) if shown else None,
        }

    def wrong_mentions(self, image_ids: list[str], captions: list[str]) -> np.ndarray:
        """Per caption, its mentions of objects not in its image (CHAIR-i's numerator)."""
        counts = self.counts(image_ids, captions)
        return counts[:, 0] - counts[:, 1]

    def precision_recall(self, predictions: Mapping[str, str]) -> dict[str, float | None]:
        """object_precision (1 - CHAIR-i) and object_recall: what a training loop logs every epoch."""
        scores = self.score(predictions)
        precision = None if scores["chair_i"] is None else 1.0 - scores["chair_i"]
        return {"object_precision": precision, "object_recall": scores["object_recall"]}

    def sample_precision(self, sequences: np.ndarray, images: list[str], vocabulary: tuple[str, ...]) -> np.ndarray:
        """1 - CHAIR-i of each row of word ids (`vocabulary[id]`, 0 padding) against `images[row]`; 0 for a row
        that names no object. Phrases span words, so each row is read in Python (a few words each)."""
        sequences = np.asarray(sequences, np.int64)
        words, lengths = np.asarray(vocabulary, object)[sequences], np.count_nonzero(sequences, axis=1)
        counts = self.counts(list(images), [" ".join(row[:n]) for row, n in zip(words, lengths)])
        return np.where(counts[:, 0] > 0, counts[:, 1] / np.maximum(counts[:, 0], 1), 0.0)


def _annotation_id(image_id: str, by_file: dict[str, int], ids: set[int]) -> int | None:
    """The annotations' id of a pipeline image id (a file name), by file name, else by the number ending it."""
    name = Path(image_id).name
    if name in by_file:
        return by_file[name]
    number = re.search(r"(\d+)\.\w+$", name)
    return int(number.group(1)) if number and int(number.group(1)) in ids else None
