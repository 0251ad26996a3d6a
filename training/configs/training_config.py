"""Configuration: frozen dataclasses, YAML loading, validation with helpful errors."""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from training.errors import UserInputError

ARCHITECTURES = ("transformer", "lstm_attention")
CAPTION_FORMATS = ("flickr8k_csv", "flickr8k_token", "flickr30k", "coco", "karpathy")  # and "auto": detect
DISTRIBUTIONS = ("none", "mirrored", "multi_worker")
MONITORS = {"val_loss": "min", "val_cider": "max", "val_bleu4": "max"}  # what each monitored value's better direction is
GROUNDED_MONITORS = {"val_object_precision": "max", "val_object_recall": "max"}  # need scenes_file or coco_instances_file
MONITORS.update(GROUNDED_MONITORS)
LR_SCHEDULES = ("plateau", "warmup_cosine")
# Training-image changes that keep a caption true: none changes hue (captions name colours) or flips (left, right).
AUGMENTATIONS = ("brightness", "contrast", "noise")
# The feature extractors training.features registers (a test keeps the two equal): a command refuses
# another name before it imports TensorFlow.
BUILT_IN_EXTRACTORS = (
    "PatchGrid",
    "ConvEncoder",
    "EfficientNetB0",
    "EfficientNetB1",
    "EfficientNetB2",
    "EfficientNetB3",
    "EfficientNetB4",
    "EfficientNetB5",
    "EfficientNetB6",
    "EfficientNetB7",
    "InceptionV3",
    "ResNet50",
    "MobileNetV3Large",
    "MobileNetV3Small",
)
# Families of extractors named "<family>:<preset>" (training.features.keras_hub registers them).
BUILT_IN_FAMILIES = ("keras_hub", "keras_hub_cls")
WEIGHTS_SUFFIXES = (".h5", ".hdf5")  # what Keras' load_weights reads: .weights.h5 (Keras 3) and legacy .h5 files


# Keys that name a file or folder: resolved against the working directory when a run starts.
PATH_KEYS = ("images_path", "captions_file", "glove_path", "artifacts_dir", "features_dir", "scenes_file", "coco_instances_file")


class ConfigError(UserInputError):
    """A configuration value or key a user must fix."""


@dataclass(frozen=True)
class DataConfig:
    images_path: str = "data/flickr8k/Images/"
    captions_file: str = "data/flickr8k/captions.txt"
    captions_format: str = "auto"
    glove_path: str | None = "data/glove.6B.200d.txt"
    artifacts_dir: str = "artifacts/flickr8k"
    features_dir: str | None = None  # the feature store; None: artifacts_dir. Runs may share one.
    train_split: float = 0.8
    val_split: float = 0.1
    test_split: float = 0.1
    word_count_threshold: int = 5
    max_caption_length: int | None = None  # None: the longest training caption
    max_images: int | None = None  # keep only the first N images (smoke runs)
    max_bad_image_fraction: float = 0.01
    seed: int = 42
    scenes_file: str | None = None  # what each image shows (the demo's scenes.json): object precision/recall
    coco_instances_file: str | None = None  # COCO instances_*.json of the images: CHAIR-i, CHAIR-s, object recall


@dataclass(frozen=True)
class ModelConfig:
    architecture: str = "transformer"
    feature_extractor: str = "EfficientNetB3"
    extractor_weights: str | None = "imagenet"
    image_size: tuple[int, int] = (300, 300)
    feature_dim: int = 1536
    use_regions: bool = True  # attend over the feature grid; False pools it to one vector
    embedding_dim: int = 200
    train_embeddings: bool = False
    hidden_dim: int = 256
    num_layers: int = 2
    num_heads: int = 8
    ff_dim: int = 1024
    dropout: float = 0.1
    encoder_filters: tuple[int, ...] = (64, 64, 128, 256)  # ConvEncoder: widths of its 3x3 conv blocks
    fine_tune_from: int | str | None = None  # keras.applications: train the backbone above this layer (or top N blocks)


@dataclass(frozen=True)
class TrainingConfig:
    batch_size: int = 64
    epochs: int = 20
    learning_rate: float = 1e-4
    clipnorm: float | None = 5.0
    early_stopping_patience: int = 5
    reduce_lr_patience: int = 2
    reduce_lr_factor: float = 0.5
    min_learning_rate: float = 1e-6
    use_mixed_precision: bool | str = "auto"  # auto: float16 on a GPU, bfloat16 on a CPU where faster; true; false
    use_xla: bool = False
    distribution: str = "none"
    resume: bool = True
    beam_size: int = 3
    eval_max_images: int | None = None
    run_name: str | None = None
    val_caption_images: int = 500  # validation images captioned (greedy) for val_bleu4/val_cider; 0 = off
    eval_every: int = 1  # epochs between those caption metrics
    monitor: str = "val_loss"  # what the checkpoint, early stopping and plateau decay follow
    mode: str = "min"  # "max" for val_cider / val_bleu4
    lr_schedule: str = "plateau"
    warmup_steps: int = 1000  # warmup_cosine: linear warm-up steps, then cosine decay to min_learning_rate
    label_smoothing: float = 0.0
    scst_epochs: int = 0  # self-critical sequence training after cross-entropy; 0 = off
    scst_samples: int = 5  # sampled captions per image; the others' mean reward is each one's baseline
    scst_learning_rate: float = 1e-5
    scst_max_length: int | None = None  # most tokens (endseq included) a sample has; None = from the training captions
    fine_tune_after: int = 0  # epochs in which the trainable image encoder stays frozen before it trains
    augment: tuple[str, ...] = ()  # AUGMENTATIONS applied to training images where the store holds pixels
    scst_grounding_weight: float = 0.0  # SCST reward: CIDEr-D + weight x the sample's object precision (0 = CIDEr-D alone)
    collapse_threshold: float = 0.2  # warn when fewer than this share of a model's captions are distinct


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None, source: str = "config") -> Config:
        """A validated Config from flat keys or data/model/training sections: Config.from_dict(c.to_dict()) == c."""
        return config_from_dict(raw, source)

    def with_absolute_paths(self, base: str | Path | None = None) -> Config:
        """The same config with every PATH_KEYS value, a weights file and a local preset folder made absolute
        against `base` (the working directory)."""
        base = Path(base) if base is not None else Path.cwd()
        absolute = {k: str((base / v).absolute()) for k in PATH_KEYS if (v := getattr(self.data, k))}
        config = dataclasses.replace(self, data=dataclasses.replace(self.data, **absolute))
        model = {}
        if is_weights_file(weights := self.model.extractor_weights):
            model["extractor_weights"] = str((base / weights).absolute())
        prefix, colon, preset = self.model.feature_extractor.partition(":")
        if colon and (base / preset).is_dir():  # a local keras-hub preset folder
            model["feature_extractor"] = f"{prefix}:{(base / preset).absolute()}"
        return dataclasses.replace(config, model=dataclasses.replace(config.model, **model))


SECTIONS = {"data": DataConfig, "model": ModelConfig, "training": TrainingConfig}
_FIELD_SECTION = {f.name: name for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)}


def _suggest(key: str, choices) -> str:
    close = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(choices))}"


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check a YAML value against a field's type hint, converting where it is lossless."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        *others, last = [a for a in args if a is not type(None)]
        for inner in others:  # e.g. bool | str: the first type the value is
            try:
                return _coerce(key, value, inner)
            except ConfigError:
                pass
        return _coerce(key, value, last)
    if origin is tuple and args[-1] is Ellipsis:  # tuple[int, ...]: a list of any length
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{key}' must be a list, got {value!r}")
        return tuple(_coerce(key, v, args[0]) for v in value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"'{key}' must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(key, v, a) for v, a in zip(value, args))
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads '1e-4' (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"'{key}' must be {name}, got {value!r} ({type(value).__name__})")


def _check(ok: bool, key: str, requirement: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"'{key}' must be {requirement}, got {value!r}")


def validate(config: Config) -> Config:
    """Raise ConfigError naming the first key whose value is out of range."""
    d, m, t = config.data, config.model, config.training
    check_split_ratios(d.train_split, d.val_split, d.test_split)
    _check(d.train_split > 0, "train_split", "> 0", d.train_split)
    formats = ("auto", *CAPTION_FORMATS)
    _check(d.captions_format in formats, "captions_format", f"one of {formats}", d.captions_format)
    _check(d.word_count_threshold >= 1, "word_count_threshold", ">= 1", d.word_count_threshold)
    _check(d.max_caption_length is None or d.max_caption_length >= 3, "max_caption_length", ">= 3 or null", d.max_caption_length)
    _check(d.max_images is None or d.max_images >= 1, "max_images", ">= 1 or null", d.max_images)
    _check(0.0 <= d.max_bad_image_fraction <= 1.0, "max_bad_image_fraction", "in [0, 1]", d.max_bad_image_fraction)
    _check(m.architecture in ARCHITECTURES, "architecture", f"one of {ARCHITECTURES}", m.architecture)
    _check(
        m.extractor_weights in (None, "imagenet") or Path(m.extractor_weights).suffix.lower() in WEIGHTS_SUFFIXES,
        "extractor_weights",
        f"'imagenet', null or the path of a weights file ({', '.join(WEIGHTS_SUFFIXES)})",
        m.extractor_weights,
    )
    _check(all(s > 0 for s in m.image_size), "image_size", "two positive sizes", m.image_size)
    for key in ("feature_dim", "embedding_dim", "hidden_dim", "num_layers", "num_heads", "ff_dim"):
        _check(getattr(m, key) > 0, key, "> 0", getattr(m, key))
    _check(m.hidden_dim % m.num_heads == 0, "hidden_dim", f"a multiple of num_heads ({m.num_heads})", m.hidden_dim)
    _check(0.0 <= m.dropout < 1.0, "dropout", "in [0, 1)", m.dropout)
    _check(
        len(m.encoder_filters) >= 1 and min(m.encoder_filters) > 0,
        "encoder_filters",
        "a list of positive widths",
        m.encoder_filters,
    )
    for key in ("batch_size", "epochs", "beam_size"):
        _check(getattr(t, key) > 0, key, "> 0", getattr(t, key))
    _check(t.learning_rate > 0, "learning_rate", "> 0", t.learning_rate)
    _check(0 < t.min_learning_rate <= t.learning_rate, "min_learning_rate", "in (0, learning_rate]", t.min_learning_rate)
    _check(t.clipnorm is None or t.clipnorm > 0, "clipnorm", "> 0 or null", t.clipnorm)
    _check(0.0 < t.reduce_lr_factor < 1.0, "reduce_lr_factor", "in (0, 1)", t.reduce_lr_factor)
    _check(t.early_stopping_patience >= 0, "early_stopping_patience", ">= 0", t.early_stopping_patience)
    _check(t.reduce_lr_patience >= 0, "reduce_lr_patience", ">= 0", t.reduce_lr_patience)
    _check(t.distribution in DISTRIBUTIONS, "distribution", f"one of {DISTRIBUTIONS}", t.distribution)
    _check(t.use_mixed_precision in (True, False, "auto"), "use_mixed_precision", "true, false or auto", t.use_mixed_precision)
    _check(t.eval_max_images is None or t.eval_max_images >= 1, "eval_max_images", ">= 1 or null", t.eval_max_images)
    _check_caption_training(t)
    _check_grounding(d, t)
    return config


def is_weights_file(extractor_weights: str | None) -> bool:
    """True when extractor_weights names a file rather than 'imagenet' or null (no weights)."""
    return extractor_weights not in (None, "imagenet")


def check_weights_file(extractor_weights: str | None) -> None:
    """A weights file that is missing, unreadable or not a complete HDF5 file stops the run before anything is written.

    HDF5 records its own length, so h5py refuses a truncated copy when it opens it; walking every dataset
    reads each one's header. Whether the file fits the backbone shows when the backbone loads it."""
    if not is_weights_file(extractor_weights):
        return
    path = Path(extractor_weights)
    fix = "point 'extractor_weights' at the backbone's weights file (or --set extractor_weights=...)"
    if not path.is_file():
        raise ConfigError(f"'extractor_weights': {'not a file' if path.exists() else 'file not found'}: {path.absolute()}; {fix}")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"'extractor_weights': permission denied: {path.absolute()}; make it readable or {fix}")
    import h5py

    try:
        with h5py.File(path, "r") as weights:
            weights.visititems(lambda name, item: None)
    except (OSError, RuntimeError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(
            f"'extractor_weights': {path.absolute()} is not a readable HDF5 weights file ({reason}); "
            f"copy or download it again, or {fix}"
        ) from None


def check_split_ratios(train_split: float, val_split: float, test_split: float) -> None:
    """Each ratio in [0, 1] and their sum 1 (within 1e-6), else ConfigError naming the key."""
    for key, value in (("train_split", train_split), ("val_split", val_split), ("test_split", test_split)):
        _check(0.0 <= value <= 1.0, key, "in [0, 1]", value)
    total = train_split + val_split + test_split
    _check(abs(total - 1.0) <= 1e-6, "train_split + val_split + test_split", "1.0 (within 1e-6)", total)


def _check_caption_training(t: TrainingConfig) -> None:
    """Keys of caption-metric monitoring, schedules and SCST."""
    _check(t.val_caption_images >= 0, "val_caption_images", ">= 0 (0 turns val_bleu4/val_cider off)", t.val_caption_images)
    _check(t.eval_every >= 1, "eval_every", ">= 1", t.eval_every)
    _check(t.monitor in MONITORS, "monitor", f"one of {tuple(MONITORS)}", t.monitor)
    _check(t.mode in ("min", "max"), "mode", "'min' or 'max'", t.mode)
    _check(
        t.mode == MONITORS[t.monitor],
        "mode",
        f"'{MONITORS[t.monitor]}' for monitor {t.monitor} ({'higher' if MONITORS[t.monitor] == 'max' else 'lower'} is better)",
        t.mode,
    )
    if t.monitor != "val_loss":
        _check(t.eval_every == 1, "eval_every", f"1 when monitor is {t.monitor} (every epoch needs the value)", t.eval_every)
        _check(t.val_caption_images >= 1, "val_caption_images", f">= 1 when monitor is {t.monitor}", t.val_caption_images)
    _check(t.lr_schedule in LR_SCHEDULES, "lr_schedule", f"one of {LR_SCHEDULES}", t.lr_schedule)
    _check(t.warmup_steps >= 0, "warmup_steps", ">= 0", t.warmup_steps)
    _check(0.0 <= t.label_smoothing < 1.0, "label_smoothing", "in [0, 1)", t.label_smoothing)
    _check(t.scst_epochs >= 0, "scst_epochs", ">= 0 (0 = no SCST stage)", t.scst_epochs)
    _check(t.scst_samples >= 2, "scst_samples", ">= 2 (each sample's baseline is the mean of the others)", t.scst_samples)
    _check(t.scst_learning_rate > 0, "scst_learning_rate", "> 0", t.scst_learning_rate)
    _check(
        t.scst_max_length is None or t.scst_max_length >= 2,
        "scst_max_length",
        ">= 2 (a word and endseq) or null (from the training captions)",
        t.scst_max_length,
    )
    if t.scst_epochs:
        _check(t.distribution == "none", "distribution", "none when scst_epochs > 0 (SCST trains in one process)", t.distribution)
        _check(
            t.val_caption_images >= 1,
            "val_caption_images",
            ">= 1 when scst_epochs > 0 (SCST keeps the best val_cider)",
            t.val_caption_images,
        )


def _check_grounding(d: DataConfig, t: TrainingConfig) -> None:
    """Keys of the grounding scores (scenes or COCO instances), the grounded SCST reward and the collapse guard."""
    _check(
        not (d.scenes_file and d.coco_instances_file),
        "coco_instances_file",
        "null when scenes_file is set (one or the other)",
        d.coco_instances_file,
    )
    grounded = bool(d.scenes_file or d.coco_instances_file)
    if t.monitor in GROUNDED_MONITORS:
        _check(
            grounded,
            "monitor",
            f"val_loss, val_cider or val_bleu4 unless scenes_file or coco_instances_file is set ({t.monitor} needs one)",
            t.monitor,
        )
    _check(t.scst_grounding_weight >= 0, "scst_grounding_weight", ">= 0 (0 = the CIDEr-D reward alone)", t.scst_grounding_weight)
    if t.scst_grounding_weight > 0:
        _check(
            grounded,
            "scst_grounding_weight",
            "0 unless scenes_file or coco_instances_file is set (the reward needs what each image shows)",
            t.scst_grounding_weight,
        )
    _check(
        0.0 <= t.collapse_threshold <= 1.0, "collapse_threshold", "in [0, 1] (a share of distinct captions)", t.collapse_threshold
    )


def config_from_dict(raw: dict[str, Any] | None, source: str = "config") -> Config:
    """Build a validated Config from flat keys (the seed's layout) or data/model/training sections."""
    raw = dict(raw or {})
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of keys to values")
    values: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for key, value in raw.items():
        if key in SECTIONS and isinstance(value, dict):
            for sub_key, sub_value in value.items():
                if _FIELD_SECTION.get(sub_key) != key:
                    section_keys = [f.name for f in dataclasses.fields(SECTIONS[key])]
                    raise ConfigError(f"{source}: unknown key '{key}.{sub_key}'{_suggest(sub_key, section_keys)}")
                values[key][sub_key] = sub_value
        elif key in _FIELD_SECTION:
            values[_FIELD_SECTION[key]][key] = value
        elif key in SECTIONS:
            example = {"data": "seed=7", "model": "dropout=0.2", "training": "epochs=3"}[key]
            raise ConfigError(f"{source}: '{key}' is a section, not a value; set one of its keys, e.g. --set {key}.{example}")
        else:
            raise ConfigError(f"{source}: unknown key '{key}'{_suggest(key, list(_FIELD_SECTION) + list(SECTIONS))}")
    sections = {}
    for name, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        try:
            kwargs = {k: _coerce(k, v, hints[k]) for k, v in values[name].items()}
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}") from None
        sections[name] = cls(**kwargs)
    try:
        return validate(Config(**sections))
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def holder_of(raw: dict[str, Any], key: str) -> dict[str, Any]:
    """The dict of a raw (flat or sectioned) config that holds `key`: its section, else the top level."""
    for section in raw.values():
        if isinstance(section, dict) and key in section:
            return section
    return raw


def parse_override(text: str) -> tuple[str, Any]:
    """'epochs=3' -> ('epochs', 3); the value is read as YAML so types come out right."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}' must look like key=value (for example epochs=3)")
    return key.strip(), yaml.safe_load(value)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Merge 'key=value' or 'section.key=value' overrides into raw config values."""
    merged = {k: (dict(v) if k in SECTIONS and isinstance(v, dict) else v) for k, v in raw.items()}
    for text in overrides:
        key, value = parse_override(text)
        section, _, name = key.rpartition(".")
        if section:
            merged.setdefault(section, {})
            if not isinstance(merged[section], dict):
                raise ConfigError(f"override '{text}': '{section}' is not a section")
            merged[section][name] = value
        else:
            holder_of(merged, name)[name] = value
    return merged


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder, not a config file (pass --config with the path of a YAML file)")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (pass --config with the path of a YAML file)")
    data = path.read_bytes()
    try:
        raw = yaml.safe_load(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{data[error.start]:02x} on line {line}); "
            "save the file as UTF-8 (for example: iconv -f latin1 -t utf-8)"
        ) from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values, got {type(raw).__name__}")
    return raw or {}


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (flat or sectioned), apply 'key=value' overrides, validate."""
    raw = apply_overrides(read_config_file(path), list(overrides or []))
    return config_from_dict(raw, source=str(path))


def save_config(config: Config, path: str | Path) -> None:
    """Write a sectioned YAML that load_config reads back to an equal Config."""
    data = config.to_dict()
    data["model"]["image_size"] = list(data["model"]["image_size"])
    data["model"]["encoder_filters"] = list(data["model"]["encoder_filters"])
    data["training"]["augment"] = list(data["training"]["augment"])
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
