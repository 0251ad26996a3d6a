"""Feature grids on disk: extract once into features.npy, resume after interruption, read memory-mapped.

Files in the store directory:
  features.npy                 float16 (images, regions, channels), rows in `image_ids` order
  features_index.json          image ids, bad images, fingerprint, grid shape; "complete": true
  features.partial.npy         the array being filled (renamed to features.npy when done)
  features.partial.json        what is being extracted (ids, bad images, fingerprint)
  features.partial.rows.json   how many rows are safely on disk; rewritten after every chunk
  .features.lock               held while a process builds, so workers sharing the folder build it once
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no inter-process lock; run one extraction per folder at a time
    fcntl = None

import numpy as np
from tqdm.auto import tqdm

from training.features.base import BaseFeatureExtractor
from training.features.images import find_bad_images
from training.utils.io import ensure_dir, load_json, save_json

logger = logging.getLogger(__name__)

FEATURES_FILE = "features.npy"
INDEX_FILE = "features_index.json"
PARTIAL_FEATURES_FILE = "features.partial.npy"
PARTIAL_STATE_FILE = "features.partial.json"
PARTIAL_ROWS_FILE = "features.partial.rows.json"
FORMAT_VERSION = 1


def fingerprint(extractor: BaseFeatureExtractor, image_ids: list[str]) -> str:
    """What the features depend on: extractor, its weights and image size, and the ordered image list."""
    # The images folder is left out on purpose: moving a dataset must not force a re-extraction.
    recipe = {
        "format": FORMAT_VERSION,
        "extractor": extractor.name,
        "feature_dim": extractor.FEATURE_DIM,
        "weights": extractor.weights,
        "image_size": list(extractor.image_size),
        "image_ids": hashlib.sha256("\n".join(image_ids).encode()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:32]


def check_bad_fraction(bad_images: list[dict], total: int, max_bad_fraction: float) -> None:
    share = len(bad_images) / total
    if share > max_bad_fraction or len(bad_images) == total:
        shown = "\n".join(f"  {b['path']}: {b['reason']}" for b in bad_images[:5])
        more = f"\n  ... and {len(bad_images) - 5} more" if len(bad_images) > 5 else ""
        if len(bad_images) == total:
            problem, fix = f"none of the {total} images is usable", "Check images_path and the files."
        else:
            problem = f"{len(bad_images)} of {total} images are unusable ({share:.1%}), more than max_bad_image_fraction={max_bad_fraction}"
            fix = "Fix or remove these files, or raise max_bad_image_fraction in the config to skip them."
        raise ValueError(f"{problem}:\n{shown}{more}\n{fix}")


class FeatureStore:
    """A finished store: `features[index[image_id]]` is that image's (regions, channels) grid."""

    def __init__(self, directory: Path, features: np.ndarray, index: dict):
        self.directory = Path(directory)
        self.features = features
        self.image_ids: list[str] = list(index["image_ids"])
        self.index: dict[str, int] = {image_id: row for row, image_id in enumerate(self.image_ids)}
        self.bad_images: list[dict] = list(index["bad_images"])
        self.grid_shape: tuple[int, int] = tuple(index["grid_shape"])
        self.extractor_name: str = index["extractor"]
        self.weights: str | None = index["weights"]
        self.image_size: tuple[int, int] = tuple(index["image_size"])
        self.feature_dim: int = int(index["feature_dim"])
        self.fingerprint: str = index["fingerprint"]

    def __len__(self) -> int:
        return len(self.image_ids)

    def get(self, image_id: str, pooled: bool = False) -> np.ndarray:
        """One image's grid (regions, channels), or with pooled=True its mean vector (channels,) in float32."""
        grid = self.features[self.index[image_id]]
        return grid.astype(np.float32).mean(axis=0) if pooled else np.asarray(grid)

    def summary(self) -> dict:
        """What the run summary records about image features."""
        return {
            "extractor": self.extractor_name,
            "weights": self.weights,
            "image_size": list(self.image_size),
            "grid_shape": list(self.grid_shape),
            "feature_dim": self.feature_dim,
            "num_images": len(self.image_ids),
            "num_bad_images": len(self.bad_images),
            "bad_images": self.bad_images,
        }

    @classmethod
    def open(cls, directory: str | Path) -> "FeatureStore":
        """Open a finished store read-only; the feature array is memory-mapped, never read whole."""
        directory = Path(directory)
        index_path, features_path = directory / INDEX_FILE, directory / FEATURES_FILE
        if not index_path.is_file() or not features_path.is_file():
            raise FileNotFoundError(
                f"no finished feature store in {directory} ({INDEX_FILE} or {FEATURES_FILE} missing); "
                "build it with FeatureStore.build(...) (the training pipeline does this)"
            )
        index = load_json(index_path)
        if not index.get("complete") or index.get("format") != FORMAT_VERSION:
            raise FileNotFoundError(
                f"{index_path}: the feature store in {directory} is unfinished or from another version; "
                "build it again with FeatureStore.build(...) (an interrupted extraction resumes)"
            )
        features = np.load(features_path, mmap_mode="r")
        expected = (len(index["image_ids"]), index["grid_shape"][0] * index["grid_shape"][1], index["feature_dim"])
        if features.shape != expected:
            raise ValueError(
                f"{features_path}: shape {features.shape} does not match {INDEX_FILE} {expected}; "
                f"delete {directory} and build the store again"
            )
        return cls(directory, features, index)

    @classmethod
    def build(
        cls,
        directory: str | Path,
        extractor: BaseFeatureExtractor,
        image_ids: Iterable[str],
        images_path: str | Path,
        chunk_size: int = 256,
        max_bad_fraction: float = 0.01,
        verbose: int = 1,
    ) -> "FeatureStore":
        """Reuse a finished store with the same fingerprint, resume a partial one, or extract from scratch."""
        directory = ensure_dir(directory)
        image_ids = [str(image_id) for image_id in image_ids]
        if not image_ids:
            raise ValueError(f"no images to extract features for (store {directory})")
        if len(set(image_ids)) != len(image_ids):
            duplicates = sorted(i for i, n in Counter(image_ids).items() if n > 1)[:5]
            raise ValueError(f"image ids must be unique, repeated: {duplicates}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        with _build_lock(directory):
            return cls._build(directory, extractor, image_ids, images_path, chunk_size, max_bad_fraction, verbose)

    @classmethod
    def _build(cls, directory, extractor, image_ids, images_path, chunk_size, max_bad_fraction, verbose):
        store_fingerprint = fingerprint(extractor, image_ids)
        index_path = directory / INDEX_FILE
        if index_path.is_file() and (directory / FEATURES_FILE).is_file():
            index = load_json(index_path)
            if index.get("complete") and index.get("fingerprint") == store_fingerprint:
                check_bad_fraction(index["bad_images"], len(image_ids), max_bad_fraction)
                logger.info("reusing feature store %s (%s, %d images)", directory, extractor.name, len(index["image_ids"]))
                return cls.open(directory)
            logger.info("feature store %s was made with other settings or images; rebuilding it", directory)

        state, features = _resume(directory, store_fingerprint)
        if state is None:
            bad_images = find_bad_images(image_ids, images_path, verbose=verbose)
            check_bad_fraction(bad_images, len(image_ids), max_bad_fraction)
            state, features = _start(directory, extractor, image_ids, bad_images, store_fingerprint)
        else:
            check_bad_fraction(state["bad_images"], len(image_ids), max_bad_fraction)
            logger.info("resuming feature extraction in %s at row %d of %d", directory, state["rows_done"], len(features))

        _fill(features, state, extractor, images_path, directory, chunk_size, verbose)
        del features  # unmaps the file before it is renamed
        _publish(directory, state)
        return cls.open(directory)


@contextmanager
def _build_lock(directory: Path) -> Iterator[None]:
    # Every distributed worker builds the store in the shared artifacts_dir: the first extracts,
    # the others wait here and then reuse its result. The OS drops the lock if the holder dies.
    with open(directory / ".features.lock", "a") as handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.info("waiting for another process building the feature store in %s", directory)
                fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _start(directory: Path, extractor, image_ids, bad_images, store_fingerprint):
    bad = {entry["image"] for entry in bad_images}
    good = [image_id for image_id in image_ids if image_id not in bad]
    state = {
        "format": FORMAT_VERSION,
        "fingerprint": store_fingerprint,
        "extractor": extractor.name,
        "weights": extractor.weights,
        "image_size": list(extractor.image_size),
        "grid_shape": list(extractor.grid_shape),
        "feature_dim": extractor.feature_dim,
        "image_ids": good,
        "bad_images": bad_images,
        "rows_done": 0,
    }
    for name in (PARTIAL_ROWS_FILE, PARTIAL_STATE_FILE, PARTIAL_FEATURES_FILE):
        (directory / name).unlink(missing_ok=True)
    shape = (len(good), extractor.num_regions, extractor.feature_dim)
    # open_memmap writes the .npy header now; rows are filled in place, chunk by chunk.
    features = np.lib.format.open_memmap(directory / PARTIAL_FEATURES_FILE, mode="w+", dtype=np.float16, shape=shape)
    save_json({k: v for k, v in state.items() if k != "rows_done"}, directory / PARTIAL_STATE_FILE)
    save_json({"fingerprint": store_fingerprint, "rows_done": 0}, directory / PARTIAL_ROWS_FILE)
    return state, features


def _resume(directory: Path, store_fingerprint: str):
    """The partial extraction left in `directory` for this fingerprint, or (None, None)."""
    paths = [directory / name for name in (PARTIAL_STATE_FILE, PARTIAL_ROWS_FILE, PARTIAL_FEATURES_FILE)]
    if not all(path.is_file() for path in paths):
        return None, None
    try:
        state, rows = load_json(paths[0]), load_json(paths[1])
        if state.get("fingerprint") != store_fingerprint or rows.get("fingerprint") != store_fingerprint:
            return None, None
        features = np.lib.format.open_memmap(paths[2], mode="r+")
        shape = (len(state["image_ids"]), state["grid_shape"][0] * state["grid_shape"][1], state["feature_dim"])
        if features.shape != shape or features.dtype != np.float16 or not 0 <= rows["rows_done"] <= shape[0]:
            return None, None
    except (ValueError, OSError, KeyError, TypeError):  # damaged partial files: start over rather than trust them
        return None, None
    state["rows_done"] = int(rows["rows_done"])
    return state, features


def _fill(features, state, extractor, images_path, directory: Path, chunk_size: int, verbose: int) -> None:
    """Extract the rows not yet on disk, recording progress after each chunk."""
    image_ids, row = state["image_ids"], state["rows_done"]
    paths = [str(Path(images_path) / image_id) for image_id in image_ids[row:]]
    saved = row
    with tqdm(total=len(image_ids), initial=row, desc=f"{extractor.name} features", unit="img", disable=not verbose) as progress:
        for batch in extractor.iter_features(paths):
            features[row : row + len(batch)] = batch
            row += len(batch)
            progress.update(len(batch))
            if row - saved >= chunk_size:
                _save_progress(features, directory, state["fingerprint"], row)
                saved = row
    if row != len(image_ids):
        raise RuntimeError(f"feature extraction in {directory} stopped at row {row} of {len(image_ids)}")
    _save_progress(features, directory, state["fingerprint"], row)


def _save_progress(features, directory: Path, store_fingerprint: str, rows_done: int) -> None:
    # Rows reach the disk before the count that claims them, so a kill between the two only loses work.
    features.flush()
    save_json({"fingerprint": store_fingerprint, "rows_done": rows_done}, directory / PARTIAL_ROWS_FILE)


def _publish(directory: Path, state: dict) -> None:
    """Turn the partial files into the finished store."""
    # Drop the old index first: a crash between the steps then leaves "no store", never new rows under an old index.
    (directory / INDEX_FILE).unlink(missing_ok=True)
    os.replace(directory / PARTIAL_FEATURES_FILE, directory / FEATURES_FILE)
    index = {k: v for k, v in state.items() if k != "rows_done"}
    index["complete"] = True
    save_json(index, directory / INDEX_FILE)
    (directory / PARTIAL_ROWS_FILE).unlink(missing_ok=True)
    (directory / PARTIAL_STATE_FILE).unlink(missing_ok=True)
