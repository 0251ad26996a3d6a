"""Training loop wiring: model build or resume, callbacks, distribution strategies, model.fit."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import keras
import tensorflow as tf

from training.callbacks.caption_metrics import CaptionMetricsCallback
from training.callbacks.checkpoint import BestModelCheckpoint, ResumeState
from training.callbacks.metrics import MetricsCallback, ProgressCallback
from training.configs import Config, ConfigError
from training.models import build_caption_model
from training.models.optimization import compile_caption_model
from training.run.artifacts import CHECKPOINT, LOGS_DIR, RESUME_DIR
from training.run.lifecycle import RunConflict, differences, identity_fingerprint, run_identity, training_left
from training.trainers.engine import epoch_callbacks, fit_epochs
from training.utils import keras_private
from training.utils.logging import draws_progress

log = logging.getLogger(__name__)


class CallbackFactory:
    """The standard callbacks, one constructor each, with the project's defaults."""

    @staticmethod
    def model_checkpoint(filepath, monitor: str = "val_loss", verbose: int = 1, mode: str = "min") -> BestModelCheckpoint:
        return BestModelCheckpoint(filepath, monitor=monitor, verbose=verbose, mode=mode)

    @staticmethod
    def early_stopping(patience: int = 5, monitor: str = "val_loss", mode: str = "min") -> keras.callbacks.EarlyStopping:
        return keras.callbacks.EarlyStopping(monitor=monitor, patience=patience, verbose=1, mode=mode)

    @staticmethod
    def reduce_lr(
        factor: float = 0.5,
        patience: int = 2,
        min_lr: float = 1e-6,
        monitor: str = "val_loss",
        mode: str = "min",
        verbose: int = 1,
    ):
        return keras.callbacks.ReduceLROnPlateau(
            monitor=monitor, factor=factor, patience=patience, min_lr=min_lr, verbose=verbose, mode=mode
        )

    @staticmethod
    def tensorboard(log_dir) -> keras.callbacks.TensorBoard:
        return keras.callbacks.TensorBoard(log_dir=str(log_dir), update_freq="epoch")

    @staticmethod
    def metrics(tracker, stage: str | None = None) -> MetricsCallback:
        return MetricsCallback(tracker, stage=stage)

    @staticmethod
    def progress(epochs: int, checkpoint=None, caption_metrics=None) -> ProgressCallback:
        return ProgressCallback(epochs, checkpoint, caption_metrics)


class EncoderGate(keras.callbacks.Callback):
    """Keeps the trainable image encoder frozen in the first `after` epochs (no gradient reaches it, so Adam leaves
    it as it is), then lets it train: the decoder first learns on fixed features, as Show, Attend and Tell
    fine-tunes. Set from the epoch number at each epoch's start, so a resumed run gates as one run straight through."""

    def __init__(self, after: int):
        super().__init__()
        self.after = int(after)

    def on_epoch_begin(self, epoch, logs=None):
        self.model.encoder_gate.assign(1.0 if epoch >= self.after else 0.0)


class Trainer:
    """Builds (or resumes) the caption model and fits it with the standard callbacks.

    Artifacts: checkpoint.keras (best val_loss), logs/ (TensorBoard), metrics.csv (through the
    tracker) and resume/ (the last completed epoch, model + optimizer + callback counters).
    """

    def __init__(self, config: Config, artifacts_dir, tracker=None):
        self.config = config
        self.artifacts_dir = Path(artifacts_dir)
        self.tracker = tracker
        self.strategy = self.create_strategy()
        self.initial_epoch = 0
        self._resume_from: dict | None = None
        self.identity = run_identity(config)
        self.caption_validation = None  # CaptionValidation: val_bleu4/val_cider every eval_every epochs
        self.steps_per_epoch: int | None = None  # needed by lr_schedule warmup_cosine

    # -- strategy --------------------------------------------------------------------------------
    def create_strategy(self) -> tf.distribute.Strategy:
        return tf.distribute.get_strategy()

    @property
    def is_chief(self) -> bool:
        return True

    @property
    def output_dir(self) -> Path:
        """Where this process writes checkpoints and state."""
        return self.artifacts_dir

    @property
    def checkpoint_path(self) -> Path:
        return self.output_dir / CHECKPOINT

    # -- model -----------------------------------------------------------------------------------
    def _resume_state(self, tracked=None, directory=None) -> ResumeState:
        directory = directory or self.output_dir / RESUME_DIR
        return ResumeState(
            directory,
            identity_fingerprint(self.identity),
            tracked or {},
            identity=self.identity,
            epochs=self.config.training.epochs,
        )

    def build_model(self, vocab_size: int, max_length: int, embedding_matrix=None):
        """A compiled model: resumed from the last completed epoch when allowed, else new."""
        # Every worker resumes from the chief's state (artifacts_dir is shared storage).
        saved = self._resume_state(directory=self.artifacts_dir / RESUME_DIR)
        latest = saved.latest() if self.config.training.resume else None
        with self.strategy.scope():
            if latest:
                model_path, state = latest
                changed = differences(state.get("identity") or {}, self.identity)
                if changed:  # the training command refuses this before writing anything; a library caller gets the same
                    raise RunConflict(
                        f"{model_path.parent} was trained with other settings: {'; '.join(changed)}. "
                        "Use another artifacts_dir, or set resume: false (--fresh)."
                    )
                model = keras.saving.load_model(model_path)
                self.initial_epoch, self._resume_from = state["epoch"], state
                log.info("resuming from %s: %d epoch(s) done", model_path.parent, state["epoch"])
            else:
                model = build_caption_model(self.config.model, vocab_size, max_length, embedding_matrix)
                compile_caption_model(model, self.config, self.steps_per_epoch)
        return model

    # -- fit -------------------------------------------------------------------------------------
    def create_callbacks(self) -> tuple[list, ResumeState]:
        t = self.config.training
        monitored = dict(monitor=t.monitor, mode=t.mode)  # the checkpoint, early stopping and decay follow one value
        # The epoch's progress line says when the checkpoint is saved and the learning rate lowered.
        checkpoint = CallbackFactory.model_checkpoint(self.checkpoint_path, verbose=0, **monitored)
        early_stopping = CallbackFactory.early_stopping(t.early_stopping_patience, **monitored)
        tracked = {"checkpoint": checkpoint, "early_stopping": early_stopping}
        caption_metrics = None
        if self.caption_validation is not None and len(self.caption_validation):
            caption_metrics = CaptionMetricsCallback(self.caption_validation, t.eval_every, self.strategy)
        if t.lr_schedule == "plateau":  # under warmup_cosine the schedule alone sets the learning rate
            tracked["reduce_lr"] = CallbackFactory.reduce_lr(
                t.reduce_lr_factor, t.reduce_lr_patience, t.min_learning_rate, verbose=0, **monitored
            )
        resume = self._resume_state(tracked)
        resume.restore_from = self._resume_from
        callbacks = epoch_callbacks(
            self.config.data.seed,
            checkpoint,
            resume,
            CallbackFactory.progress(t.epochs, checkpoint, caption_metrics),
            decisions=[tracked[name] for name in ("early_stopping", "reduce_lr") if name in tracked],
            caption_metrics=caption_metrics,
            chief=self.is_chief,
            logs_dir=self.output_dir / LOGS_DIR,
            tracker=self.tracker,
            stage="xe",
        )
        if t.fine_tune_after:
            callbacks.insert(0, EncoderGate(t.fine_tune_after))
        return callbacks, resume

    def train(
        self,
        model,
        train_dataset,
        val_dataset,
        callbacks: list | None = None,
        verbose: int | str = "auto",
        steps_per_epoch: int | None = None,
    ) -> keras.callbacks.History | None:
        """model.fit from `initial_epoch` to `epochs` with the standard callbacks plus `callbacks`.

        `train_dataset` is either one epoch of batches, or an endless stream of epochs starting at
        `initial_epoch` (DatasetBuilder.build(..., first_epoch=...)) with `steps_per_epoch` batches
        each. Ctrl-C or SIGTERM stops at once; the last completed epoch stays the resume point.
        verbose "auto": Keras' progress bar on a terminal; elsewhere only the epoch's line (ProgressCallback),
        since Keras draws its bar on any POSIX system, into log files too."""
        epochs = self.config.training.epochs
        if verbose == "auto":
            verbose = 1 if draws_progress() else 0
        left, why = training_left(self._resume_from, self.config)
        if self._resume_from or not left:
            log.info("%s", why)
        if not left:
            return None
        standard, resume = self.create_callbacks()
        callbacks = list(callbacks or []) + standard  # user callbacks first: the resume state comes last
        history = fit_epochs(
            model,
            train_dataset,  # the tf.data pipeline shuffles, by seed
            resume,
            lambda what, done: (
                f"{what} in epoch {done + 1}. The resume point is "
                + (f"epoch {done}'s state in {resume.directory}" if done else "none: no epoch was complete")
                + f"; run the same command again to continue (the half-trained epoch {done + 1} is trained again)."
            ),
            lambda epoch: (
                f"the loss became NaN or infinite in epoch {epoch}; "
                f"the last good model is {self.checkpoint_path}. Lower learning_rate or set clipnorm."
            ),
            initial_epoch=self.initial_epoch,
            validation_data=val_dataset,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            callbacks=callbacks,
            verbose=verbose,
        )
        if resume.tracked["early_stopping"].stopped_epoch:
            # Only an early stop ends a run for good: a larger `epochs` extends any other.
            resume.mark_ended("early_stopping", early_stopping_patience=self.config.training.early_stopping_patience)
        return history


class DistributedTrainer(Trainer):
    """Trainer under MirroredStrategy (devices of one host) or MultiWorkerMirroredStrategy (TF_CONFIG).

    `batch_size` is the global batch: each of the N replicas computes batch_size / N of it.
    Only the chief writes artifacts; the other workers write theirs to a temporary folder,
    as Keras' multi-worker guide prescribes.
    """

    def __init__(self, config: Config, artifacts_dir, tracker=None, strategy: tf.distribute.Strategy | None = None):
        self._given_strategy = strategy
        super().__init__(config, artifacts_dir, tracker)
        self._worker_dir: Path | None = None
        log.info("%s with %d replica(s) in sync", type(self.strategy).__name__, self.strategy.num_replicas_in_sync)

    def create_strategy(self) -> tf.distribute.Strategy:
        if self._given_strategy is not None:
            return self._given_strategy
        distribution = self.config.training.distribution
        if distribution == "multi_worker":
            if "TF_CONFIG" not in os.environ:
                raise ConfigError("distribution: multi_worker needs the TF_CONFIG environment variable (cluster and task)")
            keras_private.reduce_scalars_across_workers()
            return tf.distribute.MultiWorkerMirroredStrategy()
        if distribution == "mirrored":
            # Every GPU; on a CPU-only host, every logical CPU device the user configured.
            devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
            return tf.distribute.MirroredStrategy([d.name for d in devices])
        return tf.distribute.get_strategy()

    def build_model(self, vocab_size: int, max_length: int, embedding_matrix=None):
        model = super().build_model(vocab_size, max_length, embedding_matrix)
        keras_private.build_metrics_from_one_replica(model)
        return model

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:
            if self._worker_dir is not None:  # a non-chief worker's checkpoints and logs, of no use afterwards
                shutil.rmtree(self._worker_dir, ignore_errors=True)

    @property
    def is_chief(self) -> bool:
        resolver = getattr(self.strategy, "cluster_resolver", None)
        if resolver is None or not resolver.task_type:
            return True
        has_chief = "chief" in resolver.cluster_spec().as_dict()
        return resolver.task_type == "chief" or (not has_chief and resolver.task_type == "worker" and resolver.task_id == 0)

    @property
    def output_dir(self) -> Path:
        if self.is_chief:
            return self.artifacts_dir
        if self._worker_dir is None:
            self._worker_dir = Path(tempfile.mkdtemp(prefix="training-worker-"))
        return self._worker_dir
