"""Image files a run needs, checked without TensorFlow: a missing file stops a run before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

from training.errors import UserInputError
from training.run.artifacts import FEATURES_INDEX


def check_bad_fraction(bad_images: list[dict], total: int, max_bad_fraction: float) -> None:
    """Raise UserInputError listing the bad images when there are more than max_bad_fraction of `total`, or all."""
    share = len(bad_images) / total
    if share > max_bad_fraction or len(bad_images) == total:
        shown = "\n".join(f"  {b['path']}: {b['reason']}" for b in bad_images[:5])
        more = f"\n  ... and {len(bad_images) - 5} more" if len(bad_images) > 5 else ""
        if len(bad_images) == total:
            problem, fix = f"none of the {total} images is usable", "Check images_path and the files."
        else:
            problem = f"{len(bad_images)} of {total} images are unusable ({share:.1%}), more than max_bad_image_fraction={max_bad_fraction}"
            fix = "Fix or remove these files, or raise max_bad_image_fraction in the config to skip them."
        raise UserInputError(f"{problem}:\n{shown}{more}\n{fix}")


def stored_image_ids(store_dir: str | Path) -> set[str]:
    """The images a finished feature store in `store_dir` holds (read from its index); none if there is no store."""
    try:
        index = json.loads((Path(store_dir) / FEATURES_INDEX).read_text(encoding="utf-8"))
        return set(index["image_ids"]) if index.get("complete") else set()
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def check_missing_images(image_ids: list[str], images_path: str | Path, store_dir: str | Path, max_bad_fraction: float) -> None:
    """Refuse (as the feature store would, later) when more than max_bad_fraction of the images have no file
    and no features in the store."""
    stored = stored_image_ids(store_dir)
    missing = [
        {"image": image_id, "path": str(Path(images_path) / image_id), "reason": "file not found"}
        for image_id in image_ids
        if image_id not in stored and not (Path(images_path) / image_id).is_file()
    ]
    if missing and image_ids:
        check_bad_fraction(missing, len(image_ids), max_bad_fraction)


# Largest image decoded, in pixels (width x height): a 50-megapixel photo. A small PNG or JPEG can declare
# 50000 x 50000 pixels and decode to gigabytes; the header says so before anything is decoded.
DEFAULT_MAX_PIXELS = 50_000_000


def oversized(source, max_pixels: int) -> str | None:
    """Why the image in `source` (a path or a binary file object) has too many pixels, or None. Reads the header only;
    what is not an image is left to the decoder's check."""
    from PIL import Image

    try:
        with Image.open(source) as image:
            width, height = image.size
    except Image.DecompressionBombError:  # over Pillow's own limit, which opens no further
        return (
            f"over {2 * Image.MAX_IMAGE_PIXELS} pixels, which Pillow refuses to decode; the limit is {max_pixels} (--max-pixels)"
        )
    except Exception:  # not an image, damaged: the full check says what is wrong
        return None
    if width * height > max_pixels:
        return f"{width} x {height} = {width * height} pixels, over the limit of {max_pixels} (--max-pixels)"
    return None
