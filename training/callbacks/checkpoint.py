"""Checkpoints that are never half-written, and the state that lets an interrupted run resume."""

from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path

import keras
import numpy as np

from training.run.artifacts import STATE_FILE, STATE_MODEL_FILE
from training.run.lifecycle import latest_state, state_folder, state_folders
from training.utils.io import atomic_path, save_json

log = logging.getLogger(__name__)


class BestModelCheckpoint(keras.callbacks.Callback):
    """Saves the model when `monitor` improves, to a temporary file renamed over the old one.

    Keras' own ModelCheckpoint writes in place: a kill during the write leaves a broken file.
    """

    def __init__(self, filepath, monitor: str = "val_loss", verbose: int = 0, mode: str = "min"):
        super().__init__()
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' (lower {monitor} is better) or 'max', got {mode!r}")
        self.filepath = Path(filepath)
        self.monitor = monitor
        self.verbose = verbose
        self.mode = mode
        self.best = math.inf if mode == "min" else -math.inf
        self.saved_epoch: int | None = None  # the last epoch (from 0) whose model was saved

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(value) or (value >= self.best if self.mode == "min" else value <= self.best):
            return
        if self.verbose:
            log.info("%s improved from %.4f to %.4f: saving %s", self.monitor, self.best, value, self.filepath)
        self.best = float(value)
        with atomic_path(self.filepath) as tmp:
            self.model.save(tmp)
        self.saved_epoch = epoch


class ResumeState(keras.callbacks.Callback):
    """After every epoch, saves model + optimizer and the other callbacks' counters to `directory`.

    Each epoch's state goes to a new folder renamed into place when complete, so a kill at any
    moment leaves the previous epoch's state intact; nothing is saved in the middle of an epoch,
    so the resume point never claims more than was trained. Put this callback last: it records
    what the callbacks before it decided at the end of the epoch. `identity` (the settings that
    shaped the weights) and `epochs` (the budget) are stored with each state so a rerun can
    tell a changed config from an extended one; `facts` are the stage's own (a later stage's
    starting point), stored as they are.
    """

    STATE_FILE = STATE_FILE
    MODEL_FILE = STATE_MODEL_FILE

    def __init__(
        self,
        directory,
        fingerprint: str,
        tracked: dict[str, keras.callbacks.Callback],
        identity: dict | None = None,
        epochs: int | None = None,
        facts: dict | None = None,
    ):
        super().__init__()
        self.directory = Path(directory)
        self.fingerprint = fingerprint
        self.tracked = tracked  # name -> callback whose counters are saved
        self.identity = identity
        self.epochs = epochs
        self.facts = dict(facts or {})
        self.restore_from: dict | None = None
        self.last_saved_epoch = 0

    # -- reading -------------------------------------------------------------------------------
    def latest(self) -> tuple[Path, dict] | None:
        """The newest complete state: (its model file, its state), or None."""
        latest = latest_state(self.directory)
        return (latest[0] / self.MODEL_FILE, latest[1]) if latest else None

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
            counted = ("wait", "best", "best_epoch", "cooldown_counter", "saved_epoch")
            values = {a: getattr(callback, a) for a in counted if hasattr(callback, a)}
            counters[name] = {
                a: (float(v) if isinstance(v, float) or hasattr(v, "dtype") else v) for a, v in values.items() if v is not None
            }
        return counters

    def save(self, epoch: int) -> Path:
        """Write the state of a run whose first `epoch` epochs are complete."""
        final = state_folder(self.directory, epoch)
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.model.save(tmp / self.MODEL_FILE)
        state = {
            "fingerprint": self.fingerprint,
            "identity": self.identity,
            "epoch": epoch,
            "epochs": self.epochs,
            "callbacks": self._callback_counters(),
            **self.facts,
        }
        save_json(state, tmp / self.STATE_FILE)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in state_folders(self.directory):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        self.last_saved_epoch = epoch
        return final

    def mark_ended(self, reason: str, **details) -> None:
        """Record in the newest state that the run ended for good (`early_stopping` or `nan`)."""
        latest = self.latest()
        if latest:
            save_json(dict(latest[1], ended=reason, **details), latest[0].parent / self.STATE_FILE)

    def on_epoch_end(self, epoch, logs=None):
        # An epoch that ended in NaN (TerminateOnNaN) must not become the state a rerun resumes from.
        if all(math.isfinite(v) for k, v in (logs or {}).items() if "loss" in k):
            self.save(epoch + 1)


class EpochSeeds(keras.callbacks.Callback):
    """Sets every random seed state of the model (dropout's) from (seed, epoch) when an epoch begins.

    Keras does not save these states, so a resumed process would otherwise draw other dropout
    masks than an uninterrupted run; drawn from (seed, epoch), epoch k's masks are the same
    whichever process trains it. The seed states are found among the model's variables.
    """

    def __init__(self, seed: int):
        super().__init__()
        self.seed = int(seed)

    def on_epoch_begin(self, epoch, logs=None):
        states = [v for v in self.model.non_trainable_variables if v.name == "seed_generator_state"]
        for position, state in enumerate(states):
            value = np.random.SeedSequence([self.seed, epoch, position]).generate_state(1)[0] % (2**31 - 1)
            state.assign(np.array([value, 0], dtype=keras.backend.standardize_dtype(state.dtype)))
