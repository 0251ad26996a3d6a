"""Run lifecycle: what a rerun of an artifacts_dir may change, when training is over, where --fresh keeps the old run.

An artifacts_dir holds one run. Rerunning it continues the run (a larger `epochs` extends it)
as long as everything that shaped its weights is unchanged; keys that only extend or describe
the run may differ. Anything else is refused before a file is written, naming the keys, unless
the user asks for `--fresh`, which moves the old run into `previous_runs/` and leaves the
feature store where it is. No TensorFlow here: a refused rerun stops in a fraction of a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from training.configs import Config, ConfigError
from training.configs.training_config import is_weights_file
from training.run.artifacts import (
    FINAL_MODEL,
    METRICS_FILE,
    PREVIOUS_RUNS,
    RESUME_DIR,
    SCST_RESUME_DIR,
    SNAPSHOT_FILE,
    STATE_FILE,
    STATE_MODEL_FILE,
    SUMMARY_FILE,
    TRAINED_RUN_FILES,
)

# Keys a rerun may change without being refused. Later training stages add their epoch budgets here.
EXTENDING_KEYS = frozenset(
    {
        "epochs",
        "early_stopping_patience",  # a larger budget extends or reopens the run
        "beam_size",
        "eval_max_images",  # evaluation settings
        "scst_epochs",  # a larger SCST budget continues a finished run with (more) SCST epochs
        "val_caption_images",
        "eval_every",
        "scenes_file",  # caption metrics measured during and after training
        "coco_instances_file",
        "collapse_threshold",
        "run_name",
        "resume",  # naming and logging the run, and how it is started
        "use_mixed_precision",  # how this machine computes (the policy depends on the machine anyway)
        # Where things lie: moving a data set or a run folder must not block a resume. The images
        # reach training only through the feature store, which is keyed by image id.
        "artifacts_dir",
        "images_path",
        "features_dir",
    }
)
# The files of a local keras-hub preset folder that shape its features.
PRESET_FILES = ("config.json", "image_converter.json", "model.weights.h5")
# Data files compared by contents (size and sha256), not by path.
DATA_FILE_KEYS = ("captions_file", "glove_path")

# What --fresh leaves in place: the feature store (reused by image id), locks, and older runs.
KEPT_BY_FRESH = ("features*", ".features*", "*lock*", PREVIOUS_RUNS)

_WHOLE_FILE_LIMIT = 256 << 20  # larger files (GloVe 840B is 5.6 GB) hash their first and last MB


class RunConflict(ConfigError):
    """The artifacts_dir holds a run trained with other settings."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (preemptible machines send it), raised where Ctrl-C raises KeyboardInterrupt so both stop a run alike."""


def raise_terminated(signum, frame) -> None:
    raise Terminated()


# -- what identifies a run ---------------------------------------------------------------------
def file_fingerprint(path: str | Path | None) -> str | None:
    """'<size> bytes, sha256 <16 hex digits>' of a file's contents; None for no path."""
    if not path:
        return None
    path = Path(path)
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if size <= _WHOLE_FILE_LIMIT:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        else:
            digest.update(handle.read(1 << 20))
            handle.seek(-(1 << 20), os.SEEK_END)
            digest.update(handle.read())
    return f"{size} bytes, sha256 {digest.hexdigest()[:16]}"


def weights_identity(extractor_weights: str | None) -> str | None:
    """'imagenet', None, or a weights file by its contents: a moved copy of the same file is the same weights."""
    return f"file of {file_fingerprint(extractor_weights)}" if is_weights_file(extractor_weights) else extractor_weights


def extractor_identity(feature_extractor: str) -> str:
    """The extractor's name; a local preset folder ('keras_hub:<folder>') by its files' contents, so a moved
    folder is the same extractor and other files at the same place are not."""
    prefix, colon, preset = feature_extractor.partition(":")
    folder = Path(preset)
    if not (colon and folder.is_dir()):
        return feature_extractor
    contents = ", ".join(f"{name} {file_fingerprint(folder / name)}" for name in PRESET_FILES)
    return f"{prefix}:{folder.name} ({contents})"


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))  # tuples -> lists, as they come back from a JSON file


def _flat(config_dict: dict) -> dict[str, Any]:
    return {key: value for section in config_dict.values() for key, value in section.items()}


def run_identity(config: Config) -> dict[str, Any]:
    """Every setting that shapes the trained weights: the config without EXTENDING_KEYS, data files by contents."""
    identity = {k: v for k, v in _flat(config.to_dict()).items() if k not in EXTENDING_KEYS}
    for key in DATA_FILE_KEYS:
        identity[key] = file_fingerprint(identity[key])
    identity["extractor_weights"] = weights_identity(identity["extractor_weights"])
    identity["feature_extractor"] = extractor_identity(identity["feature_extractor"])
    return _plain(identity)


def identity_fingerprint(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'key: old -> new' for each key that differs. A key only one side knows (a run saved by an
    older version, without data file contents or a key added since) is not compared."""
    return [f"{key}: {_show(old[key])} -> {_show(new[key])}" for key in sorted(set(old) & set(new)) if old[key] != new[key]]


# -- what the folder holds ---------------------------------------------------------------------
STATE_FOLDER_PREFIX = "epoch_"  # a resume folder's states: epoch_00003 holds the state after 3 epochs


def state_folder(directory: str | Path, epoch: int) -> Path:
    """The folder in `directory` (resume/, resume_scst/) that holds the state after `epoch` epochs."""
    return Path(directory) / f"{STATE_FOLDER_PREFIX}{epoch:05d}"


def state_folders(directory: str | Path) -> list[Path]:
    """Every state folder in `directory`, complete or not (a `.tmp` one is being written), oldest first."""
    return sorted(Path(directory).glob(STATE_FOLDER_PREFIX + "*"))


def latest_state(directory: str | Path) -> tuple[Path, dict] | None:
    """The newest complete epoch state in a resume/ folder: (its folder, the state), or None."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    for folder in reversed(state_folders(directory)):
        state_file = folder / STATE_FILE
        if folder.name.endswith(".tmp") or not state_file.is_file():
            continue
        return folder, json.loads(state_file.read_text(encoding="utf-8"))
    return None


def has_trained_run(artifacts_dir: str | Path) -> bool:
    return any((Path(artifacts_dir) / name).exists() for name in TRAINED_RUN_FILES)


def saved_identity(artifacts_dir: str | Path) -> dict[str, Any] | None:
    """The identity the run in artifacts_dir was trained with, or None when it is unknown.

    Runs saved before identities were stored are compared by their config_snapshot.json,
    without the data files' contents, which it does not record."""
    latest = latest_state(Path(artifacts_dir) / RESUME_DIR)
    if latest and "identity" in latest[1]:
        return latest[1]["identity"]
    snapshot = Path(artifacts_dir) / SNAPSHOT_FILE
    if not snapshot.is_file():
        return None
    flat = _flat(json.loads(snapshot.read_text(encoding="utf-8")))
    return {k: v for k, v in flat.items() if k not in EXTENDING_KEYS and k not in DATA_FILE_KEYS}


def previous_run_folder(artifacts_dir: str | Path) -> Path:
    """Where --fresh moves the run: previous_runs/<when that run was last started>, e.g. previous_runs/2026-11-30_134510."""
    artifacts_dir = Path(artifacts_dir)
    started = [p.stat().st_mtime for p in (artifacts_dir / SNAPSHOT_FILE, artifacts_dir / METRICS_FILE) if p.is_file()]
    stamp = time.strftime("%Y-%m-%d_%H%M%S", time.localtime(min(started) if started else time.time()))
    folder, n = artifacts_dir / PREVIOUS_RUNS / stamp, 1
    while folder.exists():
        n += 1
        folder = artifacts_dir / PREVIOUS_RUNS / f"{stamp}-{n}"
    return folder


# -- decisions ---------------------------------------------------------------------------------
def check_rerun(artifacts_dir: str | Path, config: Config) -> None:
    """Raise RunConflict if artifacts_dir holds a trained run whose identity differs from config's."""
    artifacts_dir = Path(artifacts_dir)
    if not has_trained_run(artifacts_dir):
        return
    old = saved_identity(artifacts_dir)
    if old is None:
        changed = [f"(no {SNAPSHOT_FILE} and no resume state: the settings of that run are unknown)"]
    else:
        changed = differences(old, run_identity(config))
        if not changed:
            return
    raise RunConflict(
        f"{artifacts_dir} holds a run trained with other settings, and nothing in it was changed:\n  "
        + "\n  ".join(changed)
        + "\nTo go on, either train in a new folder (--set artifacts_dir=...), or rerun with --fresh: "
        f"the old run is then moved to {previous_run_folder(artifacts_dir)} (the feature store stays and is reused)."
    )


def training_left(state: dict | None, config: Config) -> tuple[bool, str]:
    """Whether a saved epoch state leaves epochs to train under `config`, and a line saying which case it is.

    Only an early stop or a NaN loss ends a run for good; a larger `epochs` extends a run that
    trained its whole budget, and a larger `early_stopping_patience` reopens an early-stopped one.
    """
    if state is None:
        return True, "no saved state: training from the first epoch"
    t, done = config.training, int(state["epoch"])
    ended = state.get("ended")
    if ended == "nan":
        return False, (
            f"the run ended when the loss became NaN in epoch {done + 1}; it is not continued. "
            "To train again, rerun with --fresh and a lower learning_rate (or set clipnorm)"
        )
    reopened = False
    if ended == "early_stopping":
        patience = int(state["early_stopping_patience"])
        if t.early_stopping_patience <= patience:
            return False, (
                f"the run ended by early stopping after epoch {done} (early_stopping_patience {patience}); "
                "a larger early_stopping_patience reopens it"
            )
        reopened = True
    if done >= t.epochs:
        return False, f"training already complete ({done} of {t.epochs} epochs): nothing to fit; a larger epochs extends it"
    if reopened:
        return True, (
            f"reopening the early-stopped run (early_stopping_patience {state['early_stopping_patience']} -> "
            f"{t.early_stopping_patience}): epochs {done + 1} to {t.epochs}"
        )
    budget = state.get("epochs")
    if budget is not None and done >= budget:
        return True, f"extending the finished run from {budget} to {t.epochs} epochs: epochs {done + 1} to {t.epochs}"
    return True, f"continuing the interrupted run: epochs {done + 1} to {t.epochs}"


def finished_and_unchanged(artifacts_dir: str | Path, config: Config) -> str | None:
    """Why a rerun has nothing to do (a finished run, the same config), or None when it has work."""
    artifacts_dir = Path(artifacts_dir)
    latest = latest_state(Path(artifacts_dir) / RESUME_DIR)
    if latest is None or not (artifacts_dir / SUMMARY_FILE).is_file() or not (artifacts_dir / FINAL_MODEL).is_file():
        return None
    left, why = training_left(latest[1], config)
    snapshot = artifacts_dir / SNAPSHOT_FILE
    if left or not snapshot.is_file():
        return None
    old, new = json.loads(snapshot.read_text(encoding="utf-8")), _plain(config.with_absolute_paths().to_dict())
    try:  # older runs stored paths as given: compare them resolved
        old = _plain(Config.from_dict(old, source=str(snapshot)).with_absolute_paths().to_dict())
    except ConfigError:
        return None
    for settings in (old, new):
        settings.get("training", {}).pop("resume", None)
    return why if old == new else None


def check_resume_files(artifacts_dir: str | Path) -> None:
    """ConfigError naming the newest epoch state whose model file is damaged (cut short, overwritten), before
    the rerun changes anything: the way on is the epoch before it, or --fresh. Reads the zip, not the model."""
    for resume_dir in (RESUME_DIR, SCST_RESUME_DIR):
        latest = latest_state(Path(artifacts_dir) / resume_dir)
        if latest is None:
            continue
        model_file = latest[0] / STATE_MODEL_FILE
        try:
            with zipfile.ZipFile(model_file) as archive:
                damaged = archive.testzip()
            problem = f"{damaged} in it fails its checksum" if damaged else None
        except (OSError, zipfile.BadZipFile, EOFError) as error:
            problem = f"{error.strerror or error}" if isinstance(error, OSError) else f"not a whole .keras file ({error})"
        if problem is None:
            continue
        earlier = [p.name for p in state_folders(latest[0].parent) if p.name < latest[0].name and (p / STATE_FILE).is_file()]
        way = f"delete {latest[0]} to continue from {max(earlier)}, or " if earlier else ""
        raise ConfigError(
            f"{model_file} is damaged ({problem}); nothing was changed. To go on, {way}rerun with --fresh "
            "to train from the first epoch (this run is moved to previous_runs/, the feature store stays)"
        )


def keep_aside(artifacts_dir: str | Path) -> Path | None:
    """--fresh: move the run in artifacts_dir to previous_run_folder(), leaving KEPT_BY_FRESH in place."""
    artifacts_dir = Path(artifacts_dir)
    if not has_trained_run(artifacts_dir):
        return None
    target = previous_run_folder(artifacts_dir)
    target.mkdir(parents=True)
    for path in sorted(artifacts_dir.iterdir()):
        if not any(fnmatch(path.name, pattern) for pattern in KEPT_BY_FRESH):
            os.replace(path, target / path.name)
    return target
