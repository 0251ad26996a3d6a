"""Right about the image: colour+shape mentions and stated counts in captions, checked against what each image shows.

A scenes file (the demo writes `scenes.json`) maps an image id to `{"objects": [{"color": ..., "shape": ...}, ...]}`.
A mention is a colour word followed by a shape word, singular or plural: "a small red circle", "two blue squares". The colours and shapes are those the scenes file uses.

- object_precision: the share of mentions whose colour+shape is in the image.
- object_recall: the share of the images' objects whose colour+shape is mentioned.
- count_accuracy: among captions that state a number ("two blue squares", "three shapes ..."), the
  share whose every stated number is right (the objects of that colour+shape, or all objects).
Each is summed over all images before dividing (micro-averaged); None when nothing was counted.

`sample_precision` gives the object precision of each of many sampled captions at once, from their word
ids (the SCST reward's grounding term): a lookup of each word's colour and the next word's shape.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from training.errors import UserInputError

NUMBERS = {
    "zero": 0,
    "no": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
}
SHAPE_WORDS = {"shape", "shapes", "object", "objects"}  # "three shapes": a count of everything shown


def load_scenes(path: str | Path) -> dict[str, list[dict]]:
    """{image_id: [object, ...]} from a scenes file; a clear error names the file when it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"scenes_file not found: {path} (point 'scenes_file' at the data set's scenes.json, or set it to null)"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        scenes = {image_id: list(scene["objects"]) for image_id, scene in raw.items()}
        for objects in scenes.values():
            for o in objects:
                str(o["color"]), str(o["shape"])
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise UserInputError(
            f'{path}: expected {{image_id: {{"objects": [{{"color": ..., "shape": ...}}]}}}} ({error!r})'
        ) from None
    return scenes


class ObjectMentions:
    """Finds colour+shape mentions and stated counts in captions, for the colours and shapes of `scenes`."""

    def __init__(self, scenes: Mapping[str, list[dict]]):
        objects = [o for scene in scenes.values() for o in scene]
        self.colors = {o["color"] for o in objects}
        self.shapes = {o["shape"] for o in objects}
        self.scenes = scenes
        self._color_index = {c: i for i, c in enumerate(sorted(self.colors))}
        self._shape_index = {s: i for i, s in enumerate(sorted(self.shapes))}
        self._presence: dict[str, np.ndarray] = {}
        self._lookups: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def _shape(self, word: str) -> str | None:
        if word in self.shapes:
            return word
        return word[:-1] if word.endswith("s") and word[:-1] in self.shapes else None

    def parse(self, caption: str) -> tuple[list[tuple[str, str]], list[tuple[int, tuple[str, str] | None]]]:
        """(mentions, counts): (colour, shape) pairs, and (number, (colour, shape) or None for all objects)."""
        words = caption.lower().split()
        mentions, counts = [], []
        for i, word in enumerate(words):
            shape = self._shape(words[i + 1]) if word in self.colors and i + 1 < len(words) else None
            if shape:
                mentions.append((word, shape))
                if i > 0 and words[i - 1] in NUMBERS:
                    counts.append((NUMBERS[words[i - 1]], (word, shape)))
            elif word in NUMBERS and i + 1 < len(words) and words[i + 1] in SHAPE_WORDS:
                counts.append((NUMBERS[word], None))
        return mentions, counts

    def require(self, image_ids) -> None:
        """Refuses image ids without a scene, naming a few of them."""
        missing = [i for i in image_ids if i not in self.scenes]
        if missing:
            raise UserInputError(f"{len(missing)} images have no scene in the scenes file (scenes_file), e.g. {missing[:3]}")

    def score(self, predictions: Mapping[str, str]) -> dict[str, float | None]:
        """object_precision, object_recall and count_accuracy of `predictions` ({image_id: caption})."""
        self.require(predictions)
        correct = mentioned = recalled = shown = counted = right = 0
        for image_id, caption in predictions.items():
            present = Counter((o["color"], o["shape"]) for o in self.scenes[image_id])
            mentions, counts = self.parse(caption)
            mentioned += len(mentions)
            correct += sum(1 for m in mentions if m in present)
            said = set(mentions)
            shown += sum(present.values())
            recalled += sum(n for kind, n in present.items() if kind in said)
            if counts:
                counted += 1
                total = sum(present.values())
                right += all(n == (present.get(kind, 0) if kind else total) for n, kind in counts)
        ratio = lambda a, b: a / b if b else None  # noqa: E731
        return {
            "object_precision": ratio(correct, mentioned),
            "object_recall": ratio(recalled, shown),
            "count_accuracy": ratio(right, counted),
        }

    def precision_recall(self, predictions: Mapping[str, str]) -> dict[str, float | None]:
        """object_precision and object_recall of `predictions`: what a training loop logs every epoch."""
        scores = self.score(predictions)
        return {"object_precision": scores["object_precision"], "object_recall": scores["object_recall"]}

    def wrong_mentions(self, image_ids: list[str], captions: list[str]) -> np.ndarray:
        """Per caption, its mentions of a colour+shape that its image does not show."""
        self.require(image_ids)
        wrong = []
        for image_id, caption in zip(image_ids, captions):
            present = {(o["color"], o["shape"]) for o in self.scenes[image_id]}
            wrong.append(sum(m not in present for m in self.parse(caption)[0]))
        return np.array(wrong, np.int64)

    def presence(self, image_id: str) -> np.ndarray:
        """(colours, shapes) booleans: which colour+shape the image shows."""
        if image_id not in self._presence:
            present = np.zeros((len(self._color_index), len(self._shape_index)), bool)
            for o in self.scenes[image_id]:
                present[self._color_index[o["color"]], self._shape_index[o["shape"]]] = True
            self._presence[image_id] = present
        return self._presence[image_id]

    def _lookup(self, vocabulary: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Per word id, its colour index and its shape index (singular or plural), -1 for none."""
        if vocabulary not in self._lookups:
            colour = np.array([self._color_index.get(w, -1) for w in vocabulary])
            shape = np.array([self._shape_index.get(self._shape(w) or "", -1) for w in vocabulary])
            self._lookups[vocabulary] = colour, shape
        return self._lookups[vocabulary]

    def sample_precision(self, sequences: np.ndarray, images: list[str], vocabulary: tuple[str, ...]) -> np.ndarray:
        """Object precision of each row of word ids (`vocabulary[id]` is its word, 0 padding) against the scene of
        `images[row]`, as `score` finds mentions; 0 for a row that names no colour+shape (nothing said right)."""
        colour_of, shape_of = self._lookup(tuple(vocabulary))
        sequences = np.asarray(sequences, np.int64)
        colour, shape = colour_of[sequences[:, :-1]], shape_of[sequences[:, 1:]]
        row, at = np.nonzero((colour >= 0) & (shape >= 0))
        present = np.stack([self.presence(i) for i in images])
        right = present[row, colour[row, at], shape[row, at]]
        mentioned = np.bincount(row, minlength=len(sequences))
        correct = np.bincount(row, right, minlength=len(sequences))
        return np.where(mentioned > 0, correct / np.maximum(mentioned, 1), 0.0)


def object_scores(predictions: Mapping[str, str], scenes_file: str | Path) -> dict[str, float | None]:
    """The object scores of `predictions` against `scenes_file` (None: nothing to count, e.g. no caption states a number)."""
    return ObjectMentions(load_scenes(scenes_file)).score(predictions)
