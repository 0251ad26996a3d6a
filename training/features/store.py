"""Feature grids on disk, keyed by image id: extract each image once, resume after interruption, read memory-mapped.

An image's features depend only on the extractor, its weights and the image size (the
store's recipe), never on which run asked for it or in which order, so every run over the
same images reuses them: a new seed, split or max_images extracts nothing, and more images
extract only the new ones (the existing rows are copied into a larger file).

Files in the store directory:
  features.npy                 float16 (images, regions, channels), rows in `image_ids` order
  features_index.json          recipe, image ids, bad images, grid shape; "complete": true
  features.partial.npy         the array being filled (renamed to features.npy when done)
  features.partial.json        what is being built (recipe, ids, bad images)
  features.partial.rows.json   how many rows are safely on disk; rewritten after every chunk
  .features.lock               held while a process builds, so runs sharing the folder build it once
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from training.data.dataset import pool_regions
from training.data.image_files import check_bad_fraction
from training.features.base import BaseFeatureExtractor
from training.features.images import find_bad_images
from training.utils.io import ensure_dir, load_json, save_json

logger = logging.getLogger(__name__)

FEATURES_FILE = "features.npy"
INDEX_FILE = "features_index.json"
PARTIAL_FEATURES_FILE = "features.partial.npy"
PARTIAL_STATE_FILE = "features.partial.json"
PARTIAL_ROWS_FILE = "features.partial.rows.json"
LOCK_FILE = ".features.lock"
FORMAT_VERSION = 1
# What an image's features depend on; two stores with the same values hold the same rows.
RECIPE_KEYS = ("extractor", "weights", "image_size", "feature_dim")


class FeatureStoreConflict(ValueError):
    """The folder holds features of another extractor, weights or image size: never replaced silently."""


def recipe(extractor: BaseFeatureExtractor) -> dict:
    """What the features depend on: the extractor, its weights (a file by contents) and the image size (not the
    images folder, so a moved data set is not re-extracted; not the image list, so any run over the same images
    shares rows)."""
    return {
        **extractor.recipe(),
        "image_size": list(extractor.image_size),
        "feature_dim": extractor.FEATURE_DIM or extractor.feature_dim,
    }


def fingerprint(extractor_recipe: dict) -> str:
    settings = {"format": FORMAT_VERSION, **{key: extractor_recipe[key] for key in RECIPE_KEYS}}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]


class FeatureStore:
    """A finished store: `features[index[image_id]]` is that image's (regions, channels) grid.

    A store returned by `build` also says what that build did: `reused` and `extracted` count the
    requested images found in the store and extracted now, `skipped` lists the requested images
    that could not be read ({"image", "path", "reason"}).
    """

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
        self.reused, self.extracted, self.skipped = 0, 0, []

    def __len__(self) -> int:
        return len(self.image_ids)

    def get(self, image_id: str, pooled: bool = False) -> np.ndarray:
        """One image's grid (regions, channels), or with pooled=True its mean vector (channels,) in float32."""
        grid = self.features[self.index[image_id]]
        return pool_regions(grid)[0].numpy() if pooled else np.asarray(grid)

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
    def open(cls, directory: str | Path) -> FeatureStore:
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
    ) -> FeatureStore:
        """The store in `directory` with the features of `image_ids`: images already in it are reused, the
        others extracted and added (an interrupted extraction resumes first). Images the store holds beyond
        `image_ids` stay in it. A store of another extractor, weights or image size is never replaced:
        that raises FeatureStoreConflict."""
        directory = ensure_dir(directory)
        image_ids = [str(image_id) for image_id in image_ids]
        if not image_ids:
            raise ValueError(f"no images to extract features for (store {directory})")
        if len(set(image_ids)) != len(image_ids):
            duplicates = sorted(i for i, n in Counter(image_ids).items() if n > 1)[:5]
            raise ValueError(f"image ids must be unique, repeated: {duplicates}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        with build_lock(directory):
            return cls._build(directory, extractor, image_ids, images_path, chunk_size, max_bad_fraction, verbose)

    @classmethod
    def _build(cls, directory, extractor, image_ids, images_path, chunk_size, max_bad_fraction, verbose):
        wanted = recipe(extractor)
        extracted, resumed = 0, set()
        state, features = _resume(directory, wanted)
        if state is not None:
            logger.info("resuming feature extraction in %s at row %d of %d", directory, state["rows_done"], len(features))
            resumed = set(state["image_ids"][state["rows_done"] :])
            extracted += len(resumed)
            _fill(features, state, extractor, images_path, directory, chunk_size, verbose)
            del features  # unmaps the file before it is renamed
            _publish(directory, state)

        old = _open_matching(directory, wanted)
        held = old.index if old is not None else {}
        missing = [image_id for image_id in image_ids if image_id not in held]  # new, or unreadable last time
        bad = find_bad_images(missing, images_path, verbose=verbose) if missing else []
        check_bad_fraction(bad, len(image_ids), max_bad_fraction)
        bad_ids, missing_ids = {entry["image"] for entry in bad}, set(missing)
        new = [image_id for image_id in missing if image_id not in bad_ids]
        bad_images = [entry for entry in (old.bad_images if old else []) if entry["image"] not in missing_ids] + bad
        if new:
            state, features = _start(directory, wanted, extractor, old, new, bad_images)
            del old  # the old rows are copied; features.npy is replaced when the new file is complete
            _fill(features, state, extractor, images_path, directory, chunk_size, verbose)
            del features
            _publish(directory, state)
            extracted += len(new)
        elif bad_images != old.bad_images:  # an image is still unreadable, or unreadable now: note it, rows unchanged
            index = load_json(directory / INDEX_FILE)
            save_json(dict(index, bad_images=bad_images), directory / INDEX_FILE)

        store = cls.open(directory)
        store.reused = sum(1 for image_id in image_ids if image_id in held and image_id not in resumed)
        store.extracted, store.skipped = extracted, bad
        logger.info(
            "feature store %s (%s): %d image(s) reused, %d extracted%s",
            directory,
            extractor.name,
            store.reused,
            store.extracted,
            f", {len(bad)} unreadable skipped" if bad else "",
        )
        return store


@contextmanager
def build_lock(directory: Path) -> Iterator[None]:
    # Every run sharing the folder (and every distributed worker) builds here: the first extracts,
    # the others wait and then reuse its rows. The OS drops the lock if the holder dies. A builder's
    # temporary files are its own while it holds the lock: whoever cleans the folder takes it first.
    lock = FileLock(directory / LOCK_FILE)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info("waiting for another process building the feature store in %s", directory)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _conflict(directory: Path, what: str, found: dict, wanted: dict, remove: list[str]) -> FeatureStoreConflict:
    differs = ", ".join(f"{key} {found.get(key)!r} -> {wanted[key]!r}" for key in RECIPE_KEYS if found.get(key) != wanted[key])
    files = " and ".join(str(directory / name) for name in remove)
    return FeatureStoreConflict(
        f"{directory} holds {what} made with other settings ({differs}); it is left as it is. "
        f"Keep these features in another folder (set features_dir, or artifacts_dir, to a new one), "
        f"or delete {files} to replace them."
    )


def _open_matching(directory: Path, wanted: dict) -> FeatureStore | None:
    """The finished store in `directory` when its recipe is `wanted`; None when there is none."""
    if not (directory / INDEX_FILE).is_file() or not (directory / FEATURES_FILE).is_file():
        return None
    index = load_json(directory / INDEX_FILE)
    if not index.get("complete") or index.get("format") != FORMAT_VERSION:
        index = {}  # another version's store: every recipe key differs
    if any(index.get(key) != wanted[key] for key in RECIPE_KEYS):
        raise _conflict(directory, "a feature store", index, wanted, [FEATURES_FILE, INDEX_FILE])
    return FeatureStore.open(directory)


def _start(directory: Path, wanted: dict, extractor, old: FeatureStore | None, new_ids: list[str], bad_images: list[dict]):
    """A partial store of the old rows (copied) followed by room for `new_ids`."""
    old_ids = old.image_ids if old is not None else []
    if old is not None and tuple(old.grid_shape) != tuple(extractor.grid_shape):
        found = dict(wanted, extractor=f"{old.extractor_name} with a {tuple(old.grid_shape)} grid")
        raise _conflict(directory, "a feature store", found, wanted, [FEATURES_FILE, INDEX_FILE])
    state = {
        "format": FORMAT_VERSION,
        "fingerprint": fingerprint(wanted),
        **wanted,
        "grid_shape": list(extractor.grid_shape),
        "image_ids": old_ids + new_ids,
        "bad_images": bad_images,
        "rows_done": len(old_ids),
    }
    for name in (PARTIAL_ROWS_FILE, PARTIAL_STATE_FILE, PARTIAL_FEATURES_FILE):
        (directory / name).unlink(missing_ok=True)
    shape = (len(state["image_ids"]), extractor.num_regions, extractor.feature_dim)
    # open_memmap writes the .npy header now; rows are filled in place, chunk by chunk.
    features = np.lib.format.open_memmap(directory / PARTIAL_FEATURES_FILE, mode="w+", dtype=np.float16, shape=shape)
    try:
        _reserve(directory / PARTIAL_FEATURES_FILE)
    except OSError:
        features = None  # unmapped before the file goes
        (directory / PARTIAL_FEATURES_FILE).unlink(missing_ok=True)  # no state file names it yet: nothing is lost
        raise
    for begin in range(0, len(old_ids), 1024):
        end = min(begin + 1024, len(old_ids))
        features[begin:end] = old.features[begin:end]
    # The state files are written once the copy is on disk: a kill during the copy leaves no partial to resume.
    features.flush()
    save_json({k: v for k, v in state.items() if k != "rows_done"}, directory / PARTIAL_STATE_FILE)
    save_json({"fingerprint": state["fingerprint"], "rows_done": len(old_ids)}, directory / PARTIAL_ROWS_FILE)
    if old_ids:
        logger.info(
            "copied the %d rows of %s into a larger file for %d new image(s)",
            len(old_ids),
            directory / FEATURES_FILE,
            len(new_ids),
        )
    return state, features


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _reserve(path: Path) -> None:
    """Allocate every block of the (sparse) memory-mapped file now: a full disk is then an OSError naming the
    file here, not a SIGBUS that kills the process at the first row the disk has no room for."""
    if not hasattr(os, "posix_fallocate"):  # macOS, Windows: the file system allocates as rows are written
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as error:
        if error.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system that cannot reserve: as before
            return
        raise OSError(error.errno, error.strerror, str(path)) from None
    finally:
        os.close(fd)


def _resume(directory: Path, wanted: dict):
    """The partial extraction left in `directory`, or (None, None); one of another recipe is refused."""
    paths = [directory / name for name in (PARTIAL_STATE_FILE, PARTIAL_ROWS_FILE, PARTIAL_FEATURES_FILE)]
    if not all(path.is_file() for path in paths):
        return None, None
    try:
        state, rows = load_json(paths[0]), load_json(paths[1])
        if rows.get("fingerprint") != state.get("fingerprint"):
            return None, None
    except (ValueError, OSError):  # damaged partial files: start over rather than trust them
        return None, None
    if any(state.get(key) != wanted[key] for key in RECIPE_KEYS):
        raise _conflict(
            directory,
            "an unfinished feature extraction",
            state,
            wanted,
            [PARTIAL_FEATURES_FILE, PARTIAL_STATE_FILE, PARTIAL_ROWS_FILE],
        )
    try:
        _reserve(paths[2])  # a partial file of an older version may still be sparse
        features = np.lib.format.open_memmap(paths[2], mode="r+")
        shape = (len(state["image_ids"]), state["grid_shape"][0] * state["grid_shape"][1], state["feature_dim"])
        if features.shape != shape or features.dtype != np.float16 or not 0 <= rows["rows_done"] <= shape[0]:
            return None, None
    except OSError as error:
        if error.errno in _DISK_FULL:
            raise
        return None, None
    except (ValueError, KeyError, TypeError):
        return None, None
    state["rows_done"] = int(rows["rows_done"])
    return state, features


def link_store(store_dir: str | Path, run_dir: str | Path) -> None:
    """Show the store in `store_dir` inside `run_dir` under the usual names (symbolic links), so tools that
    read a run folder find its features; a store that grows later stays visible through the links."""
    run_dir = Path(run_dir)
    own = [name for name in (FEATURES_FILE, INDEX_FILE) if (run_dir / name).exists() and not (run_dir / name).is_symlink()]
    if own:
        raise FeatureStoreConflict(
            f"{run_dir} holds a feature store of its own ({', '.join(own)}); it is left as it is. Use it "
            f"(features_dir: {run_dir}), or move those files away to link the store in {store_dir} instead."
        )
    for name in (FEATURES_FILE, INDEX_FILE):
        link, target = run_dir / name, (Path(store_dir) / name).resolve()
        if link.is_symlink() and link.resolve() == target:
            continue
        temporary = run_dir / f".{name}.link.tmp"
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(target)
        os.replace(temporary, link)


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
