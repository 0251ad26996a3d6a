"""Second training stage: self-critical sequence training (SCST), a policy gradient on the CIDEr-D of sampled captions.

From the best cross-entropy model, each step samples `scst_samples` captions per image in one
compiled pass (`CaptionSampler`), rewards each with its CIDEr-D against the image's references
(document frequencies of the training split, computed once; the project's own tokens, no Java),
takes as each sample's baseline the mean reward of the image's other samples, and minimises
-(reward - baseline) * (sum of the sample's log-probs). Epochs continue the cross-entropy stage's
numbering in metrics.csv (stage `scst`); after each one the validation CIDEr-D decides whether
`checkpoint_scst.keras` is replaced, and the state in `resume_scst/` lets a killed run continue.
The run's final model is the SCST one only if its best val_cider beats the cross-entropy model's.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from training.evaluation.cider import CiderD
from training.evaluation.metrics import strip_wrappers
from training.utils.io import atomic_path, save_json
from training.artifacts import SCST_CHECKPOINT, SCST_RESUME_DIR, STATE_FILE, STATE_MODEL_FILE, XE_MODEL
from training.utils.lifecycle import Terminated, latest_state
from training.utils.logging import draws_progress

log = logging.getLogger(__name__)


def self_critical_advantages(rewards: np.ndarray, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """(reward - baseline, baseline) per sample; rows i * samples .. i * samples + samples - 1 are image i's,
    and a sample's baseline is the mean reward of its image's other samples."""
    grouped = np.asarray(rewards, np.float64).reshape(-1, samples)
    baseline = (grouped.sum(axis=1, keepdims=True) - grouped) / (samples - 1)
    return (grouped - baseline).reshape(-1), baseline.reshape(-1)


def sequence_log_probs(model, features, sequences, start_id: int, banned_mask):
    """Sum of log p(word) over each row's words (endseq included, padding not), teacher-forced with
    dropout off: the policy the sampler drew from, renormalised by `banned_mask` as it was."""
    sequences = tf.cast(sequences, tf.int32)
    inputs = tf.concat([tf.fill([tf.shape(sequences)[0], 1], tf.cast(start_id, tf.int32)), sequences[:, :-1]], axis=1)
    logits = tf.cast(model((features, inputs), training=False), tf.float32)
    log_probs = tf.nn.log_softmax(logits + banned_mask, axis=-1)
    picked = tf.gather(log_probs, sequences, batch_dims=2)
    real = tf.cast(sequences != 0, tf.float32)
    return tf.reduce_sum(tf.where(real > 0, picked, 0.0), axis=1)


def scst_loss(log_probs, advantages):
    """-(reward - baseline) * log p(sample), averaged over the samples."""
    return -tf.reduce_mean(tf.cast(advantages, tf.float32) * log_probs)


def scst_train_step(model, sampler):
    """A compiled step: (image features, their sampled captions, advantages) -> one optimizer update; returns the loss."""
    banned = sampler.banned_mask(model.vocab_size)
    samples, start_id = sampler.samples, sampler.tokenizer.start_id

    @tf.function(reduce_retracing=True)
    def train_step(features, sequences, advantages):
        rows = tf.repeat(features, samples, axis=0)  # each image's features for each of its samples
        with tf.GradientTape() as tape:
            loss = scst_loss(sequence_log_probs(model, rows, sequences, start_id, banned), advantages)
        gradients = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply(gradients, model.trainable_variables)
        return loss

    return train_step


def compile_for_scst(model, learning_rate: float, clipnorm: float | None) -> None:
    """Give the model its SCST optimizer (saved with it, so a resumed stage keeps Adam's moments)."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate, clipnorm=clipnorm))
    model.optimizer.build(model.trainable_variables)


class SelfCriticalTrainer:
    """Runs the SCST stage of a run in `artifacts_dir`; `run(xe_model, xe_epochs)` returns (final model, facts)."""

    def __init__(self, config, artifacts_dir, tokenizer, builder, train_captions: dict, validation, tracker=None,
                 callbacks: list | None = None):
        from training.evaluation.inference import CaptionSampler  # noqa: F401 - fail early if missing

        self.config, self.artifacts_dir = config, Path(artifacts_dir)
        self.tokenizer, self.builder, self.validation, self.tracker = tokenizer, builder, validation, tracker
        self.callbacks = list(callbacks or [])
        self.references = {i: [strip_wrappers(c) for c in captions] for i, captions in train_captions.items()}
        self.cider = CiderD.from_references(self.references)  # training-split document frequencies, once
        self.samples = config.training.scst_samples
        self.images_per_batch = max(1, config.training.batch_size // self.samples)
        self.directory = self.artifacts_dir / SCST_RESUME_DIR

    # -- one step ----------------------------------------------------------------------------------
    def rewards(self, sequences: np.ndarray, image_ids: list[str]) -> np.ndarray:
        texts = self.tokenizer.sequences_to_texts(sequences, strip_special=True)
        owners = [i for i in image_ids for _ in range(self.samples)]
        return np.array([self.cider.score(t, self.references[i], key=i) for t, i in zip(texts, owners)])

    # -- state -------------------------------------------------------------------------------------
    def save_state(self, model, state: dict) -> None:
        """Model + optimizer + counters of `state['epoch']` completed SCST epochs; the previous state is
        replaced only once this one is complete (as the cross-entropy stage's resume/)."""
        name = f"epoch_{state['epoch']:05d}"
        final, tmp = self.directory / name, self.directory / f"{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model.save(tmp / STATE_MODEL_FILE)
        save_json(state, tmp / STATE_FILE)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in self.directory.glob("epoch_*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)

    def start(self, xe_model, xe_epochs: int):
        """(model, state) to continue from: the saved SCST state of this run, or the cross-entropy model."""
        t = self.config.training
        latest = latest_state(self.directory) if t.resume else None
        if latest and latest[1].get("xe_epochs") == xe_epochs:
            folder, state = latest
            log.info("SCST: resuming from %s: %d of %d epoch(s) done", folder, state["epoch"], t.scst_epochs)
            return keras.saving.load_model(folder / STATE_MODEL_FILE), state
        if latest:
            log.warning("SCST: the saved SCST state followed %s cross-entropy epochs, this run has %d: SCST starts again",
                        latest[1].get("xe_epochs"), xe_epochs)
        xe_val = self.validation.score(xe_model)
        log.info("SCST: cross-entropy model val BLEU-4 %.4f, CIDEr-D %.4f", xe_val["val_bleu4"], xe_val["val_cider"])
        model = keras.saving.load_model(self.artifacts_dir / XE_MODEL)  # a copy: the XE model stays as it is
        compile_for_scst(model, t.scst_learning_rate, t.clipnorm)
        state = {"epoch": 0, "xe_epochs": xe_epochs, "xe_val_cider": xe_val["val_cider"],
                 "xe_val_bleu4": xe_val["val_bleu4"], "best_val_cider": -math.inf, "best_epoch": None}
        return model, state

    # -- the stage ---------------------------------------------------------------------------------
    def run(self, xe_model, xe_epochs: int):
        from training.evaluation.inference import CaptionSampler

        t = self.config.training
        model, state = self.start(xe_model, xe_epochs)
        if state["epoch"] < t.scst_epochs:
            self.train(model, state, CaptionSampler(model, self.tokenizer, self.samples))
        else:
            log.info("SCST: %d of %d epoch(s) already done", state["epoch"], t.scst_epochs)
        improved = state["best_epoch"] is not None and state["best_val_cider"] > state["xe_val_cider"]
        facts = {"final_model": "scst" if improved else "xe", "scst_epochs": state["epoch"],
                 "xe_val_cider": state["xe_val_cider"], "scst_best_val_cider": state["best_val_cider"],
                 "scst_best_epoch": state["best_epoch"]}
        if improved:
            log.info("SCST: final model is the SCST one (val CIDEr-D %.4f > %.4f of the cross-entropy model)",
                     state["best_val_cider"], state["xe_val_cider"])
            return keras.saving.load_model(self.artifacts_dir / SCST_CHECKPOINT), facts
        log.info("SCST: final model is the cross-entropy one (its val CIDEr-D %.4f; SCST's best %.4f)",
                 state["xe_val_cider"], state["best_val_cider"])
        return xe_model, facts

    def train(self, model, state: dict, sampler) -> None:
        t, seed = self.config.training, self.config.data.seed
        train_step = scst_train_step(model, sampler)
        image_ids = list(self.references)
        callbacks = keras.callbacks.CallbackList(self.callbacks, model=model) if self.callbacks else None
        if callbacks:
            callbacks.on_train_begin()
        try:
            while state["epoch"] < t.scst_epochs:
                epoch = state["xe_epochs"] + state["epoch"]  # 0-based, continuing the cross-entropy epochs
                started = time.perf_counter()
                if callbacks:
                    callbacks.on_epoch_begin(epoch)
                order = np.random.default_rng([seed, epoch]).permutation(len(image_ids))
                batches = [order[i:i + self.images_per_batch] for i in range(0, len(order), self.images_per_batch)]
                losses, rewards = [], []
                bar = tqdm(batches, desc=f"SCST epoch {epoch + 1}", unit="batch", leave=False, disable=not draws_progress(sys.stderr))
                for number, batch in enumerate(bar):
                    ids = [image_ids[i] for i in batch]
                    features = tf.constant(self.builder.image_features(ids), tf.float32)
                    sequences = sampler.sample(features, (seed, epoch * 100_000 + number))
                    reward = self.rewards(sequences, ids)
                    advantage, _ = self_critical_advantages(reward, self.samples)
                    losses.append(float(train_step(features, sequences, advantage)))
                    rewards.append(float(reward.mean()))
                    if callbacks:
                        callbacks.on_train_batch_end(number, {"loss": losses[-1]})
                values = self.validation.score(model)
                logs = {"train_loss": float(np.mean(losses)), "reward": float(np.mean(rewards)), **values,
                        "learning_rate": float(t.scst_learning_rate),
                        "epoch_time_seconds": round(time.perf_counter() - started, 3)}
                saved = values["val_cider"] > state["best_val_cider"]
                if saved:
                    log.debug("SCST: val_cider improved from %.4f to %.4f: saving %s", state["best_val_cider"],
                              values["val_cider"], self.artifacts_dir / SCST_CHECKPOINT)
                    with atomic_path(self.artifacts_dir / SCST_CHECKPOINT) as tmp:
                        model.save(tmp)
                    state.update(best_val_cider=values["val_cider"], best_epoch=epoch + 1)
                if self.tracker is not None:
                    self.tracker.log_metrics(epoch=epoch + 1, stage="scst", **logs)
                state["epoch"] += 1
                self.save_state(model, state)
                log.info("SCST epoch %d/%d (run epoch %d) | reward %.4f | loss %.4f | val_bleu4 %.4f | val_cider %.4f | %.1fs%s",
                         state["epoch"], t.scst_epochs, epoch + 1, logs["reward"], logs["train_loss"],
                         values["val_bleu4"], values["val_cider"], logs["epoch_time_seconds"],
                         f" | saved {SCST_CHECKPOINT}" if saved else "")
                if callbacks:
                    callbacks.on_epoch_end(epoch, logs)
        except KeyboardInterrupt as interrupt:
            from training.trainers.trainer import TrainingInterrupted

            done = state["epoch"]
            what = "SIGTERM" if isinstance(interrupt, Terminated) else "interrupted"
            raise TrainingInterrupted(
                f"{what} in SCST epoch {done + 1}; nothing was saved from that epoch. The resume point is "
                + (f"SCST epoch {done}'s state in {self.directory}" if done else "the end of the cross-entropy stage")
                + f". Run the same command again to continue (SCST epoch {done + 1} is trained again).",
                terminated=isinstance(interrupt, Terminated),
            ) from None
        if callbacks:
            callbacks.on_train_end()
