"""Image files -> model-ready batches: up-front validity checks (Pillow) and the tf.data decode pipeline."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import tensorflow as tf
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

# What tf.io.decode_image reads (MPO: camera JPEGs with extra frames); anything else Pillow opens
# (TIFF, ...) would fail later inside tf.data.
DECODABLE_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP")


def check_image(path: str | Path) -> str | None:
    """Return why `path` is not a usable image, or None when it decodes completely."""
    path = Path(path)
    try:
        if not path.is_file():
            return "file not found" if not path.exists() else "not a regular file"
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        with Image.open(path) as image:
            image.verify()  # structure and checksums, without decoding pixels
        with Image.open(path) as image:  # verify() leaves the image unusable, so reopen to decode
            image_format = image.format
            # JPEG: decode at 1/8 scale, which still reads every coded byte, so truncation shows at a fraction of the cost.
            image.draft("RGB", (1, 1))
            image.load()
    except UnidentifiedImageError:
        return "not an image (Pillow cannot identify the format)"
    except PermissionError:
        return "permission denied"
    except Exception as error:  # Pillow's decoders raise many types for damaged data; all mean "bad image"
        return f"cannot be decoded ({type(error).__name__}: {error})"
    if image_format not in DECODABLE_FORMATS:
        return f"{image_format} images are not supported; convert to JPEG or PNG"
    return None


def find_bad_images(image_ids: Sequence[str], images_path: str | Path, verbose: int = 1) -> list[dict]:
    """Check every image up front; return [{"image", "path", "reason"}] for the unusable ones, in input order."""
    images_path = Path(images_path)
    if not images_path.is_dir():
        raise FileNotFoundError(f"images folder not found: {images_path} (set images_path in the config)")
    paths = [images_path / image_id for image_id in image_ids]
    # Pillow releases the GIL while decoding, so threads check several files at once.
    with ThreadPoolExecutor(max_workers=min(8, 2 * (os.cpu_count() or 1))) as pool:
        reasons = list(
            tqdm(pool.map(check_image, paths), total=len(paths), desc="checking images", unit="img", disable=not verbose)
        )
    return [
        {"image": image_id, "path": str(path), "reason": reason}
        for image_id, path, reason in zip(image_ids, paths, reasons)
        if reason is not None
    ]


def load_image(path: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    """Read, decode (grayscale, RGBA and palette become RGB) and resize one file; float32 in [0, 255]."""
    return decode_image(tf.io.read_file(path), image_size)


def decode_image(encoded: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    """Decode one encoded image (JPEG, PNG, ...; RGB out) and resize it; float32 in [0, 255]."""
    return resize_image(tf.io.decode_image(encoded, channels=3, expand_animations=False), image_size)


def resize_image(image: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    """One (height, width, 3) image -> image_size, float32 in [0, 255]."""
    # Shrinking: an area (box) filter averages every source pixel, so no aliasing, at a fraction of the CPU
    # of antialiased bilinear; on a CPU machine decoding competes with the CNN for the same cores.
    # Growing (or mixed): bilinear, as area would give blocky nearest-neighbour-like output.
    shrinking = tf.reduce_all(tf.shape(image)[:2] >= image_size)
    image = tf.cond(
        shrinking,
        lambda: tf.image.resize(image, image_size, method="area"),
        lambda: tf.image.resize(image, image_size, antialias=True),
    )
    return tf.ensure_shape(image, (*image_size, 3))


def image_dataset(
    paths: Sequence[str],
    image_size: tuple[int, int],
    batch_size: int,
    preprocess: Callable | None = None,
) -> tf.data.Dataset:
    """Batches of decoded, resized (and preprocessed) images in the order of `paths`."""
    autotune = tf.data.AUTOTUNE
    dataset = tf.data.Dataset.from_tensor_slices(tf.constant([str(p) for p in paths], dtype=tf.string))
    # Deterministic order: row i of the output must be paths[i].
    dataset = dataset.map(lambda path: load_image(path, image_size), num_parallel_calls=autotune, deterministic=True)
    dataset = dataset.batch(batch_size)
    if preprocess is not None:
        dataset = dataset.map(preprocess, num_parallel_calls=autotune, deterministic=True)
    # Prefetch so decoding the next batches overlaps the model working on this one.
    return dataset.prefetch(autotune)
