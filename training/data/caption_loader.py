"""Caption loading and splitting: a captions file -> {image: [raw captions]} -> train/val/test by image.

Formats (`CaptionLoader(captions_format=...)`, "auto" detects them from the content):

- flickr8k_csv    Kaggle Flickr8k `captions.txt`: header `image,caption`, CSV quoting.
- flickr8k_token  `Flickr8k.token.txt`: `1000268201_693b08cb0e.jpg#0<TAB>caption`.
- flickr30k       `results.csv`: header `image_name| comment_number| comment`, '|' separated.
- coco            `captions_*.json`: `images` (id, file_name) and `annotations` (image_id, caption).
- karpathy        `dataset_*.json`: `images` with `filename`, optional `filepath`, `split` and
                  `sentences[].raw`; the image key is `filepath/filename` when `filepath` is
                  given (COCO keeps train2014/ and val2014/ apart), else `filename`. The file's
                  split is kept in `loader.file_splits` (restval counts as train).

Rows with no caption and malformed rows are skipped, counted in `loader.stats` and logged.
Exact duplicates (the same caption twice for one image) are counted and kept by default: the
real Kaggle Flickr8k file has 10, where two annotators wrote the same sentence, and keeping
them keeps its 5 references per image. `drop_duplicates=True` skips them.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.configs.training_config import CAPTION_FORMATS, check_split_ratios
from training.errors import UserInputError

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")
_KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}
_TOKEN_LINE = re.compile(r"^[^\t#]+#\d+\t")
_SKIP_KINDS = {
    "missing_caption": "rows with no caption",
    "malformed_rows": "malformed rows",
    "duplicate_rows": "exact duplicate rows",
    "unknown_image": "annotations for an image id not listed in 'images'",
    "images_without_captions": "images with no caption",
}


class CaptionFileError(UserInputError):
    """A captions file the user must fix or describe differently (captions_format)."""


class _Collector:
    """Gathers captions in file order and counts what it skips (first place noted for the log)."""

    def __init__(self, drop_duplicates: bool):
        self.drop_duplicates = drop_duplicates
        self.captions: dict[str, list[str]] = {}
        self.counts = {kind: 0 for kind in _SKIP_KINDS}
        self.first_seen: dict[str, str] = {}
        self._seen: set[tuple[str, str]] = set()

    def skip(self, kind: str, where: str) -> None:
        self.counts[kind] += 1
        self.first_seen.setdefault(kind, where)

    def add(self, image: str, caption: str | None, where: str) -> None:
        image = image.strip()
        caption = caption.strip() if isinstance(caption, str) else ""
        if not image:
            self.skip("malformed_rows", where)
        elif not caption:
            self.skip("missing_caption", where)
        elif (image, caption) in self._seen:
            self.skip("duplicate_rows", where)
            if not self.drop_duplicates:
                self.captions[image].append(caption)
        else:
            self._seen.add((image, caption))
            self.captions.setdefault(image, []).append(caption)


class CaptionLoader:
    """Reads a captions file into {image file name: [raw captions in file order]}.

    After `load`: `stats` holds the counts of images, captions and skipped rows;
    `file_splits` is {image: 'train'|'val'|'test'} for Karpathy files, else None;
    `detected_format` is the format that was used.
    """

    def __init__(self, captions_format: str = "auto", drop_duplicates: bool = False):
        if captions_format != "auto" and captions_format not in CAPTION_FORMATS:
            raise ValueError(f"unknown captions_format {captions_format!r}; choose one of: auto, {', '.join(CAPTION_FORMATS)}")
        self.captions_format = captions_format
        self.drop_duplicates = drop_duplicates
        self.detected_format: str | None = None
        self.file_splits: dict[str, str] | None = None
        self.stats: dict[str, int] = {}

    def load(self, path: str | Path) -> dict[str, list[str]]:
        path = Path(path)
        self.file_splits, self.stats, self.detected_format = None, {}, None
        text = _read_text(path)
        fmt = self.captions_format
        data = None
        if fmt in ("coco", "karpathy") or (fmt == "auto" and text.lstrip()[:1] in ("{", "[")):
            data = _parse_json(text, path, fmt)
        if fmt == "auto":
            fmt = _detect_json_format(data, path) if data is not None else _detect_text_format(text, path)
        collector = _Collector(self.drop_duplicates)
        if fmt == "flickr8k_csv":
            _parse_flickr8k_csv(text, path, collector)
        elif fmt == "flickr8k_token":
            _parse_flickr8k_token(text, collector)
        elif fmt == "flickr30k":
            _parse_flickr30k(text, path, collector)
        elif fmt == "coco":
            _parse_coco(data, path, collector)
        else:
            self.file_splits = _parse_karpathy(data, path, collector)
        if not collector.captions:
            raise CaptionFileError(
                f"{path}: no captions found (read as {fmt}); check that captions_file points at the "
                f"captions file and that captions_format ({self.captions_format}) matches it"
            )
        self.detected_format = fmt
        self.stats = {
            "images": len(collector.captions),
            "captions": sum(len(texts) for texts in collector.captions.values()),
            **collector.counts,
        }
        for kind, description in _SKIP_KINDS.items():
            if collector.counts[kind]:
                kept = kind == "duplicate_rows" and not self.drop_duplicates
                logger.log(
                    logging.INFO if kept else logging.WARNING,
                    "%s: %s %d %s (first at %s)",
                    path,
                    "kept" if kept else "skipped",
                    collector.counts[kind],
                    description,
                    collector.first_seen[kind],
                )
        logger.info(
            "%s: loaded %d captions for %d images (format %s)",
            path,
            self.stats["captions"],
            self.stats["images"],
            fmt,
        )
        return collector.captions


# ---------------------------------------------------------------- reading and detection


def _read_text(path: Path) -> str:
    if path.is_dir():
        raise CaptionFileError(
            f"captions file {path} is a folder: point captions_file at the captions file inside it (e.g. captions.txt)"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"captions file not found: {path} (set captions_file in the config to your dataset's captions file)"
        )
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # -sig: a leading byte-order mark is accepted and dropped
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise CaptionFileError(
            f"{path}: not UTF-8 text: byte 0x{raw[error.start]:02x} at byte offset {error.start} "
            f"(line {line}); convert the file to UTF-8 (for example: iconv -f <its encoding> -t utf-8)"
        ) from None
    if not text.strip():
        raise CaptionFileError(f"{path}: file is empty; point captions_file at a file that holds captions")
    return text


def _lines(text: str) -> list[str]:
    # split on '\n' only: str.splitlines() would also break captions at rare Unicode separators
    return [line.rstrip("\r") for line in text.split("\n")]


def _parse_json(text: str, path: Path, fmt: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise CaptionFileError(
            f"{path}: not valid JSON (line {error.lineno}, column {error.colno}): {error.msg}; "
            f"fix the file or set captions_format (now {fmt!r}) to its real format"
        ) from None


def _detect_json_format(data: Any, path: Path) -> str:
    images = data.get("images") if isinstance(data, dict) else None
    if isinstance(images, list) and "annotations" in data:
        return "coco"
    if isinstance(images, list) and (not images or isinstance(images[0], dict) and "sentences" in images[0]):
        return "karpathy"
    keys = sorted(data)[:10] if isinstance(data, dict) else type(data).__name__
    raise CaptionFileError(
        f"{path}: JSON file of unknown layout (top level: {keys}); expected COCO (keys 'images' and "
        f"'annotations') or Karpathy ('images' with 'sentences'); set captions_format to one of: "
        f"{', '.join(CAPTION_FORMATS)}"
    )


def _detect_text_format(text: str, path: Path) -> str:
    lines = _lines(text)
    number, first = next((i, line) for i, line in enumerate(lines, 1) if line.strip())
    header = first.replace(" ", "").lower()
    if header.startswith("image_name|"):
        return "flickr30k"
    if header.startswith("image,caption"):
        return "flickr8k_csv"
    if _TOKEN_LINE.match(first):
        return "flickr8k_token"
    raise CaptionFileError(
        f"{path}: cannot tell the captions format from line {number} ({first[:80]!r}); expected a "
        f"header 'image,caption' (Flickr8k CSV), 'image_name| comment_number| comment' (Flickr30k), "
        f"'name.jpg#0<TAB>caption' lines (Flickr8k token) or COCO/Karpathy JSON; "
        f"set captions_format to one of: {', '.join(CAPTION_FORMATS)}"
    )


# ---------------------------------------------------------------- one parser per format


def _parse_flickr8k_csv(text: str, path: Path, collector: _Collector) -> None:
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next((row for row in reader if any(field.strip() for field in row)), [])
    if [field.strip().lower() for field in header[:2]] != ["image", "caption"]:
        raise CaptionFileError(
            f"{path}: line {reader.line_num} is {','.join(header)[:80]!r}, expected the header 'image,caption' "
            f"of the Kaggle Flickr8k captions file; add that header or set captions_format"
        )
    end_of_previous = reader.line_num
    for row in reader:
        start = end_of_previous + 1
        end_of_previous = reader.line_num
        if not any(field.strip() for field in row):
            continue  # blank line
        if any("\n" in field or "\r" in field for field in row):
            raise CaptionFileError(
                f"{path}: line {start}: a double quote opened here is never closed (the field runs over "
                f'lines {start}-{reader.line_num}); close the quote or double it ("") inside the caption'
            )
        # an unquoted caption with commas splits into several fields; image names hold no commas
        collector.add(row[0], ",".join(row[1:]), f"line {start}")


def _parse_flickr8k_token(text: str, collector: _Collector) -> None:
    for number, line in enumerate(_lines(text), 1):
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        if not tab:
            collector.skip("malformed_rows", f"line {number}")
            continue
        image = key.rsplit("#", 1)[0] if "#" in key else key
        collector.add(image, caption, f"line {number}")


def _parse_flickr30k(text: str, path: Path, collector: _Collector) -> None:
    lines = _lines(text)
    header_number = next(i for i, line in enumerate(lines) if line.strip())
    header = lines[header_number].replace(" ", "").lower()
    if not header.startswith("image_name|comment_number|comment"):
        raise CaptionFileError(
            f"{path}: line {header_number + 1} is {lines[header_number][:80]!r}, expected the header "
            f"'image_name| comment_number| comment' of Flickr30k results.csv; add it or set captions_format"
        )
    for number, line in enumerate(lines[header_number + 1 :], header_number + 2):
        if not line.strip():
            continue
        parts = line.split("|", 2)
        where = f"line {number}"
        if len(parts) == 2 and parts[1].strip().isdigit():
            collector.skip("missing_caption", where)  # 'name.jpg| 4' with the comment left off
        elif len(parts) < 3 or not parts[1].strip().isdigit():
            collector.skip("malformed_rows", where)  # e.g. 'name.jpg| 4   A dog ...' (a '|' missing)
        else:
            collector.add(parts[0], parts[2], where)


def _json_list(data: Any, key: str, path: Path, fmt: str) -> list:
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, list):
        raise CaptionFileError(
            f"{path}: expected a list under the key '{key}' of a {fmt} captions file; "
            f"check the file or set captions_format to its real format"
        )
    return value


def _parse_coco(data: Any, path: Path, collector: _Collector) -> None:
    images = _json_list(data, "images", path, "coco")
    annotations = _json_list(data, "annotations", path, "coco")
    names: dict[Any, str] = {}
    for i, image in enumerate(images):
        if isinstance(image, dict) and "id" in image and isinstance(image.get("file_name"), str):
            names[image["id"]] = image["file_name"]
        else:
            collector.skip("malformed_rows", f"images[{i}]")
    by_image: dict[Any, list[tuple[str, Any]]] = {}
    for i, annotation in enumerate(annotations):
        where = f"annotations[{i}]"
        if not isinstance(annotation, dict) or "image_id" not in annotation:
            collector.skip("malformed_rows", where)
        elif annotation["image_id"] not in names:
            collector.skip("unknown_image", where)
        else:
            by_image.setdefault(annotation["image_id"], []).append((where, annotation.get("caption")))
    for image_id, name in names.items():  # images in the order the file lists them
        if image_id not in by_image:
            collector.skip("images_without_captions", f"image id {image_id}")
        for where, caption in by_image.get(image_id, []):
            collector.add(name, caption, where)


def _parse_karpathy(data: Any, path: Path, collector: _Collector) -> dict[str, str]:
    file_splits: dict[str, str] = {}
    for i, image in enumerate(_json_list(data, "images", path, "karpathy")):
        where = f"images[{i}]"
        if not isinstance(image, dict) or not isinstance(image.get("filename"), str):
            collector.skip("malformed_rows", where)
            continue
        name = image["filename"].strip()
        if image.get("filepath"):
            name = f"{str(image['filepath']).strip().rstrip('/')}/{name}"
        split = _KARPATHY_SPLITS.get(image.get("split"))
        if split is None:
            raise CaptionFileError(
                f"{path}: {where} ({name}) has split {image.get('split')!r}; expected one of "
                f"{', '.join(_KARPATHY_SPLITS)}; fix the file or use captions_format coco/flickr with ratio splits"
            )
        sentences = image.get("sentences")
        if not isinstance(sentences, list) or not sentences:
            collector.skip("images_without_captions", where)
            continue
        before = len(collector.captions.get(name, ()))
        for j, sentence in enumerate(sentences):
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            collector.add(name, raw, f"{where}.sentences[{j}]")
        if len(collector.captions.get(name, ())) > before:
            file_splits[name] = split
    return file_splits


# ---------------------------------------------------------------- splits


@dataclass(frozen=True)
class DataSplit:
    """Captions divided by image: no image appears in two of train, val and test."""

    train: dict[str, list[str]]
    val: dict[str, list[str]]
    test: dict[str, list[str]]

    def summary(self) -> dict[str, dict[str, int]]:
        """{'train': {'images': n, 'captions': m}, 'val': {...}, 'test': {...}}"""
        return {
            name: {"images": len(part), "captions": sum(len(texts) for texts in part.values())}
            for name, part in (("train", self.train), ("val", self.val), ("test", self.test))
        }


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))  # not round(): banker's rounding surprises at .5


def create_splits(
    captions: dict[str, list[str]],
    train_split: float = 0.8,
    val_split: float = 0.1,
    test_split: float = 0.1,
    seed: int = 42,
    file_splits: dict[str, str] | None = None,
) -> DataSplit:
    """Split images (with all their captions) into train/val/test.

    With `file_splits` (a dataset's own split, e.g. Karpathy's) every image goes where it says
    and the ratios are ignored. Otherwise image ids are sorted, then shuffled with
    numpy.random.default_rng(seed), so the result depends only on the ids and the seed; val and
    test sizes are rounded (half up) and train takes the rest. Each split's dict is in sorted id order.
    """
    ids = sorted(captions)
    if file_splits is not None:
        assignment = _assign_from_file(ids, file_splits)
    else:
        check_split_ratios(train_split, val_split, test_split)
        n_val = _round_half_up(len(ids) * val_split)
        n_test = min(_round_half_up(len(ids) * test_split), len(ids) - n_val)
        n_train = len(ids) - n_val - n_test
        if ids and train_split > 0 and n_train == 0:
            raise UserInputError(f"train split would be empty: {len(ids)} images are too few for train_split={train_split}")
        order = np.random.default_rng(seed).permutation(len(ids))
        names = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
        assignment = {ids[index]: name for index, name in zip(order, names)}
    parts: dict[str, dict[str, list[str]]] = {name: {} for name in SPLIT_NAMES}
    for image_id in ids:
        parts[assignment[image_id]][image_id] = list(captions[image_id])
    split = DataSplit(**parts)
    logger.info("split by image: %s", split.summary())
    return split


def _assign_from_file(ids: list[str], file_splits: dict[str, str]) -> dict[str, str]:
    missing = [image_id for image_id in ids if image_id not in file_splits]
    if missing:
        raise UserInputError(
            f"{len(missing)} images have captions but no split in file_splits, for example {missing[0]!r}; "
            f"pass file_splits covering every image (or None to split by ratios)"
        )
    assignment = {}
    for image_id in ids:
        name = _KARPATHY_SPLITS.get(file_splits[image_id])
        if name is None:
            raise UserInputError(
                f"file_splits[{image_id!r}] is {file_splits[image_id]!r}; expected one of {', '.join(SPLIT_NAMES)}"
            )
        assignment[image_id] = name
    return assignment


def get_max_caption_length(captions: dict[str, list[str]]) -> int:
    """Longest caption in whitespace-separated tokens (start/end markers count when present)."""
    lengths = [len(text.split()) for texts in captions.values() for text in texts]
    if not lengths:
        raise ValueError("get_max_caption_length: no captions given")
    return max(lengths)
