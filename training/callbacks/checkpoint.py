"""Checkpoints that are never half-written, and the state that lets an interrupted run resume."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path

import keras

from training.utils.io import atomic_path, save_json

log = logging.getLogger("training.trainers")


class BestModelCheckpoint(keras.callbacks.Callback):
    """Saves the model when `monitor` improves, to a temporary file renamed over the old one.

    Keras' own ModelCheckpoint writes in place: a kill during the write leaves a broken file.
    """

    def __init__(self, filepath, monitor: str = "val_loss", verbose: int = 0):
        super().__init__()
        self.filepath = Path(filepath)
        self.monitor = monitor
        self.verbose = verbose
        self.best = math.inf

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(value) or value >= self.best:
            return
        if self.verbose:
            log.info("%s improved from %.4f to %.4f: saving %s", self.monitor, self.best, value, self.filepath)
        self.best = float(value)
        with atomic_path(self.filepath) as tmp:
            self.model.save(tmp)


class ResumeState(keras.callbacks.Callback):
    """After every epoch, saves model + optimizer and the other callbacks' counters to `directory`.

    Each epoch's state goes to a new folder renamed into place when complete, so a kill at any
    moment leaves the previous epoch's state intact. Put this callback last: it records what the
    callbacks before it decided at the end of the epoch.
    """

    STATE_FILE = "state.json"
    MODEL_FILE = "model.keras"

    def __init__(self, directory, fingerprint: str, tracked: dict[str, keras.callbacks.Callback]):
        super().__init__()
        self.directory = Path(directory)
        self.fingerprint = fingerprint
        self.tracked = tracked  # name -> callback whose counters are saved
        self.restore_from: dict | None = None
        self.last_saved_epoch = 0

    # -- reading -------------------------------------------------------------------------------
    def latest(self) -> tuple[Path, dict] | None:
        """The newest complete state whose fingerprint matches, or None."""
        if not self.directory.is_dir():
            return None
        for folder in sorted(self.directory.glob("epoch_*"), reverse=True):
            state_file = folder / self.STATE_FILE
            if folder.name.endswith(".tmp") or not state_file.is_file():
                continue
            state = json.loads(state_file.read_text(encoding="utf-8"))
            if state.get("fingerprint") != self.fingerprint:
                log.warning("resume state in %s is from a different configuration; starting afresh", self.directory)
                return None
            return folder / self.MODEL_FILE, state
        return None

    def on_train_begin(self, logs=None):
        # Runs after the other callbacks' on_train_begin, which reset their counters.
        if not self.restore_from:
            return
        for name, callback in self.tracked.items():
            for attribute, value in self.restore_from.get("callbacks", {}).get(name, {}).items():
                setattr(callback, attribute, value)

    # -- writing -------------------------------------------------------------------------------
    def _callback_counters(self) -> dict:
        counters = {}
        for name, callback in self.tracked.items():
            values = {a: getattr(callback, a) for a in ("wait", "best", "best_epoch", "cooldown_counter") if hasattr(callback, a)}
            counters[name] = {a: (float(v) if isinstance(v, float) or hasattr(v, "dtype") else v) for a, v in values.items() if v is not None}
        return counters

    def save(self, epoch: int, interrupted: bool = False) -> Path:
        """Write the state of a run whose first `epoch` epochs are complete."""
        name = f"epoch_{epoch:05d}" + ("_interrupted" if interrupted else "")
        final, tmp = self.directory / name, self.directory / f"{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.model.save(tmp / self.MODEL_FILE)
        state = {
            "fingerprint": self.fingerprint,
            "epoch": epoch,
            "interrupted": interrupted,
            "callbacks": self._callback_counters(),
        }
        save_json(state, tmp / self.STATE_FILE)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in self.directory.glob("epoch_*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        self.last_saved_epoch = epoch
        return final

    def on_epoch_end(self, epoch, logs=None):
        # An epoch that ended in NaN (TerminateOnNaN) must not become the state a rerun resumes from.
        if all(math.isfinite(v) for k, v in (logs or {}).items() if "loss" in k):
            self.save(epoch + 1)
