"""Kaggle setup: find the attached Flickr/GloVe datasets (and backbone weights) and write a training config pointing at them."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import yaml

from training.configs import config_from_dict, load_config
from training.configs.training_config import holder_of
from training.utils.io import atomic_write_text

logger = logging.getLogger(__name__)

DEFAULT_INPUT_ROOT = "/kaggle/input"
_GLOVE_NAME = re.compile(r"^glove\.6B\.(\d+)d\.txt$")
_MAX_DEPTH = 5  # Kaggle mounts datasets a few levels deep (/kaggle/input/<dataset>/<folder>/...)
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def _input_root(input_root: str | Path | None) -> Path:
    return Path(input_root or os.environ.get("KAGGLE_INPUT_ROOT") or DEFAULT_INPUT_ROOT)


def _walk(root: Path):
    """os.walk limited to _MAX_DEPTH levels; the caller prunes `dirnames` to skip image folders."""
    if not root.is_dir():
        return
    base_depth = len(root.parts)
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if len(here.parts) - base_depth >= _MAX_DEPTH:
            dirnames[:] = []
        dirnames.sort()  # deterministic choice when several copies exist
        yield here, dirnames, filenames


def _has_images(path: Path) -> bool:
    return path.is_dir() and any(p.suffix.lower() in _IMAGE_SUFFIXES for p in path.iterdir())


def find_datasets(input_root: str | Path | None = None) -> dict[str, Any]:
    """Locate Flickr8k (Images/ + captions.txt), Flickr30k (flickr30k_images/ + results.csv), glove.6B.*d.txt,
    weights files (*.h5, by name: the first of each) and keras-hub preset folders (config.json + model.weights.h5)."""
    root = _input_root(input_root)
    found: dict[str, Any] = {"flickr8k": None, "flickr30k": None, "glove": [], "weights": {}, "presets": []}
    for here, dirnames, filenames in _walk(root):
        if found["flickr8k"] is None and "captions.txt" in filenames and "Images" in dirnames:
            found["flickr8k"] = {"images_path": here / "Images", "captions_file": here / "captions.txt"}
        if found["flickr30k"] is None and "results.csv" in filenames:
            # The Kaggle copy nests the folder: <dataset>/flickr30k_images/flickr30k_images/*.jpg
            for images in (here / "flickr30k_images" / "flickr30k_images", here / "flickr30k_images"):
                if _has_images(images):
                    found["flickr30k"] = {"images_path": images, "captions_file": here / "results.csv"}
                    break
        for name in sorted(filenames):
            match = _GLOVE_NAME.match(name)
            if match:
                found["glove"].append({"path": here / name, "dim": int(match.group(1))})
            if name.endswith(".h5"):
                found["weights"].setdefault(name, here / name)
        if {"config.json", "model.weights.h5"} <= set(filenames):
            found["presets"].append(here)
        # Image folders hold thousands of files and no datasets; skip walking into them.
        dirnames[:] = [d for d in dirnames if d != "Images" and not (d == "flickr30k_images" and _has_images(here / d))]
    return found


def setup_kaggle_training(verbose: bool = True, input_root: str | Path | None = None) -> dict[str, Any]:
    """Enable GPU memory growth and report the environment: GPUs, TensorFlow version, attached datasets."""
    import tensorflow as tf

    from training.utils.mixed_precision import configure_gpus

    root = _input_root(input_root)
    info = {
        "on_kaggle": "KAGGLE_KERNEL_RUN_TYPE" in os.environ or Path(DEFAULT_INPUT_ROOT).is_dir(),
        "tensorflow_version": tf.__version__,
        "gpus": configure_gpus(),
        "input_root": str(root),
        "input_datasets": sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else [],
    }
    if verbose:
        for key, value in info.items():
            print(f"{key}: {value}")
        if not info["gpus"]:
            print("No GPU visible: enable one in the notebook settings (Accelerator) to train at a useful speed.")
    return info


def _set_key(raw: dict[str, Any], key: str, value: Any) -> None:
    holder_of(raw, key)[key] = value  # the base config may be flat or split into sections


def _base_config_path(base_config: str | Path) -> Path:
    path = Path(base_config)
    if not path.is_file() and not path.is_absolute():
        # Outside the repository root, fall back to the config.yaml shipped inside the package.
        packaged = Path(__file__).resolve().parent / path.name
        if packaged.is_file():
            return packaged
    return path


def create_kaggle_config(
    input_root: str | Path | None = None,
    working_dir: str | Path = "/kaggle/working",
    output_path: str | Path = "training/config.kaggle.yaml",
    base_config: str | Path = "training/config.yaml",
) -> Path:
    """Write `output_path`: the base config with dataset, GloVe and artifact paths for this Kaggle notebook.

    input_root defaults to $KAGGLE_INPUT_ROOT, then /kaggle/input. Flickr8k is preferred over Flickr30k.
    """
    root = _input_root(input_root)
    found = find_datasets(root)
    dataset_name = "flickr8k" if found["flickr8k"] else "flickr30k" if found["flickr30k"] else None
    if dataset_name is None:
        raise FileNotFoundError(
            f"no captioning dataset found under {root} (searched {_MAX_DEPTH} levels deep) for "
            "Flickr8k: a folder holding Images/ and captions.txt, or "
            "Flickr30k: results.csv beside flickr30k_images/ (or flickr30k_images/flickr30k_images/). "
            "Add the 'adityajn105/flickr8k' dataset to the notebook, or pass input_root / set KAGGLE_INPUT_ROOT."
        )
    dataset = found[dataset_name]

    base_path = _base_config_path(base_config)
    raw = yaml.safe_load(base_path.read_text(encoding="utf-8")) or {}
    _set_key(raw, "images_path", str(dataset["images_path"]))
    _set_key(raw, "captions_file", str(dataset["captions_file"]))
    _set_key(raw, "captions_format", "flickr8k_csv" if dataset_name == "flickr8k" else "flickr30k")
    _set_key(raw, "artifacts_dir", str(Path(working_dir)))  # the README's outputs live directly in /kaggle/working
    glove = _pick_glove(found["glove"], wanted_dim=_get_key(raw, "embedding_dim"))
    if glove is None:
        logger.warning("no glove.6B.*d.txt under %s: word embeddings start random and are trained", root)
        _set_key(raw, "glove_path", None)
        _set_key(raw, "train_embeddings", True)  # random embeddings frozen would never learn
    else:
        _set_key(raw, "glove_path", str(glove["path"]))
        _set_key(raw, "embedding_dim", glove["dim"])

    _use_attached_weights(raw, found, root)

    output_path = Path(output_path)
    config_from_dict(raw, source=str(output_path))  # fail before writing anything
    header = f"# Written by training.kaggle_utils.create_kaggle_config from {base_path} ({dataset_name} under {root}).\n"
    atomic_write_text(output_path, header + yaml.safe_dump(raw, sort_keys=False))
    load_config(output_path)  # what TrainingPipeline will read must load as written
    logger.info("Kaggle config written to %s (%s, GloVe: %s)", output_path, dataset_name, glove and glove["path"])
    return output_path


def _use_attached_weights(raw: dict[str, Any], found: dict[str, Any], root: Path) -> None:
    """Point the config at the backbone's weights in an attached data set, for a notebook without internet:
    keras.applications' own file (e.g. efficientnetb3_notop.h5) as extractor_weights, or for keras_hub:<preset>
    a preset folder of that name (a Kaggle model: <model>/keras/<preset>/<version>/) as the extractor."""
    from training.configs import ModelConfig
    from training.features import FeatureExtractorRegistry

    extractor = _get_key(raw, "feature_extractor") or ModelConfig.feature_extractor
    if holder_of(raw, "extractor_weights").get("extractor_weights", ModelConfig.extractor_weights) != "imagenet":
        return  # null (random weights), or a weights file the base config names
    prefix, colon, preset = extractor.partition(":")
    if colon:
        folders = [folder for folder in found["presets"] if preset in folder.parts]
        if folders:
            _set_key(raw, "feature_extractor", f"{prefix}:{folders[0]}")
            logger.info("keras-hub preset %s found in %s", preset, folders[0])
        return
    file_name = getattr(FeatureExtractorRegistry().lookup(extractor), "WEIGHTS_FILE", "")
    if file_name in found["weights"]:
        _set_key(raw, "extractor_weights", str(found["weights"][file_name]))
        logger.info("%s weights found: %s", extractor, found["weights"][file_name])
    elif file_name:
        logger.info(
            "no %s under %s: the %s ImageNet weights download on first use (attach that file as a data set "
            "to train without internet)",
            file_name,
            root,
            extractor,
        )


def _get_key(raw: dict[str, Any], key: str) -> Any:
    return holder_of(raw, key).get(key)


def _pick_glove(candidates: list[dict[str, Any]], wanted_dim: Any) -> dict[str, Any] | None:
    """The GloVe file matching the configured embedding_dim, else the largest one found."""
    for candidate in candidates:
        if candidate["dim"] == wanted_dim:
            return candidate
    return max(candidates, key=lambda c: c["dim"], default=None)
