"""Second training stage: self-critical sequence training (SCST), a policy gradient on the CIDEr-D of sampled captions.

From the best cross-entropy model, each step samples `scst_samples` captions per image in one
compiled pass (`CaptionSampler`), rewards each with its CIDEr-D against the image's references
(document frequencies of the training split, computed once; the project's own tokens, no Java;
the whole batch at once in numpy, `BatchCiderD`), takes as each sample's baseline the mean reward
of the image's other samples, and minimises -(reward - baseline) * (sum of the sample's log-probs),
computed on each image's samples packed in one row (`pack_samples`). Epochs continue the cross-entropy stage's
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from training.evaluation.cider import BatchCiderD, CiderD
from training.evaluation.metrics import strip_wrappers
from training.run.artifacts import SCST_CHECKPOINT, SCST_RESUME_DIR, STATE_FILE, STATE_MODEL_FILE, XE_MODEL
from training.run.lifecycle import Terminated, latest_state
from training.utils.io import atomic_path, save_json
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


def pack_samples(sequences, advantages, samples: int, start_id: int):
    """Each image's `samples` sampled captions packed end to end in one row, as DatasetBuilder packs
    an image's captions for cross-entropy: (inputs, targets, positions, weights), each (images, T).

    `sequences` (images * samples, max_length): row i * samples + j is image i's j-th sample, words
    then endseq (when it ended) then padding. A sample's inputs are startseq and its tokens but the
    last, its targets its tokens, its positions 0, 1, ...; every target carries its sample's
    advantage / (images * samples) as weight, so that -sum(weights * log p(target)) is the SCST loss,
    -mean over samples of (reward - baseline) * log p(sample).
    Row length is the sum of the image's sample lengths, not samples x max_length."""
    sequences = tf.cast(sequences, tf.int32)
    lengths = tf.reduce_sum(tf.cast(sequences != 0, tf.int32), axis=1)
    inputs = tf.concat([tf.fill([tf.shape(sequences)[0], 1], tf.cast(start_id, tf.int32)), sequences[:, :-1]], axis=1)
    weights = tf.cast(advantages, tf.float32) / tf.cast(tf.shape(sequences)[0], tf.float32)

    def per_image(ragged):  # (images * samples, None) -> (images, None): an image's samples end to end
        return tf.RaggedTensor.from_uniform_row_length(ragged, samples).merge_dims(1, 2).to_tensor()

    return (
        per_image(tf.RaggedTensor.from_tensor(inputs, lengths=lengths)),
        per_image(tf.RaggedTensor.from_tensor(sequences, lengths=lengths)),
        per_image(tf.ragged.range(lengths)),
        per_image(tf.RaggedTensor.from_row_lengths(tf.repeat(weights, lengths), lengths)),
    )


def scst_train_step(model, sampler):
    """A compiled step: (image features, their sampled captions, advantages) -> one optimizer update; returns the loss.

    The loss is -mean(advantage * `sequence_log_probs`), computed on packed rows (`pack_samples`): each
    image's regions are projected once for its samples, and no sample is padded to max_length."""
    banned = sampler.banned_mask(model.vocab_size)
    samples, start_id = sampler.samples, sampler.tokenizer.start_id

    # Traced once: any number of images, and packed rows of any length.
    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, None], tf.float32),
            tf.TensorSpec([None, None], tf.int32),
            tf.TensorSpec([None], tf.float32),
        ]
    )
    def train_step(features, sequences, advantages):
        inputs, targets, positions, weights = pack_samples(sequences, advantages, samples, start_id)
        with tf.GradientTape() as tape:
            logits = tf.cast(model((features, inputs, positions), training=False), tf.float32)
            log_probs = tf.nn.log_softmax(logits + banned, axis=-1)
            picked = tf.gather(log_probs, targets, batch_dims=2)
            loss = -tf.reduce_sum(tf.where(weights != 0, weights * picked, 0.0))
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

    def __init__(
        self,
        config,
        artifacts_dir,
        tokenizer,
        builder,
        train_captions: dict,
        validation,
        tracker=None,
        callbacks: list | None = None,
    ):
        from training.evaluation.inference import CaptionSampler  # noqa: F401 - fail early if missing

        self.config, self.artifacts_dir = config, Path(artifacts_dir)
        self.tokenizer, self.builder, self.validation, self.tracker = tokenizer, builder, validation, tracker
        self.callbacks = list(callbacks or [])
        self.references = {i: [strip_wrappers(c) for c in captions] for i, captions in train_captions.items()}
        self.cider = CiderD.from_references(self.references)  # training-split document frequencies, once
        self.batch_cider = BatchCiderD(self.cider, tokenizer.vocabulary, tokenizer.end_id, self.references)
        self.step_seconds = {"features": 0.0, "sampling": 0.0, "reward": 0.0, "update": 0.0}  # summed over steps
        self.tokens_trained = 0  # sampled tokens (words and endseq) the updates trained on
        self.samples = config.training.scst_samples
        self.images_per_batch = max(1, config.training.batch_size // self.samples)
        self.directory = self.artifacts_dir / SCST_RESUME_DIR

    # -- one step ----------------------------------------------------------------------------------
    def rewards(self, sequences: np.ndarray, image_ids: list[str]) -> np.ndarray:
        """CIDEr-D of each sample against its image's references (BatchCiderD: CiderD.score, vectorised)."""
        return self.batch_cider.scores(sequences, [i for i in image_ids for _ in range(self.samples)])

    def step(self, train_step, sampler, ids: list[str], features, seed) -> tuple[float, float]:
        """One SCST step on images `ids` (their features already gathered): (loss, mean reward).
        Adds the seconds of sampling, reward and update to `step_seconds`."""
        times, count = [time.perf_counter()], len(ids)
        full = features
        if count < self.images_per_batch:  # the epoch's last, smaller batch: sampled at the full batch's shape
            extra = tf.zeros((self.images_per_batch - count,) + tuple(features.shape[1:]), features.dtype)
            full = tf.concat([features, extra], axis=0)  # so the sampler is traced once; the extra rows are dropped
        sequences = sampler.sample(full, seed)[: count * self.samples]
        times.append(time.perf_counter())
        reward = self.rewards(sequences, ids)
        advantage, _ = self_critical_advantages(reward, self.samples)
        times.append(time.perf_counter())
        loss = float(train_step(features, sequences, advantage.astype(np.float32)))
        times.append(time.perf_counter())
        self.tokens_trained += int(np.count_nonzero(sequences))
        for name, begin, end in zip(("sampling", "reward", "update"), times, times[1:]):
            self.step_seconds[name] += end - begin
        return loss, float(reward.mean())

    def features(self, ids: list[str]):
        started = time.perf_counter()
        features = tf.constant(self.builder.image_features(ids), tf.float32)
        self.step_seconds["features"] += time.perf_counter() - started
        return features

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
            log.warning(
                "SCST: the saved SCST state followed %s cross-entropy epochs, this run has %d: SCST starts again",
                latest[1].get("xe_epochs"),
                xe_epochs,
            )
        xe_val = self.validation.score(xe_model)
        log.info("SCST: cross-entropy model val BLEU-4 %.4f, CIDEr-D %.4f", xe_val["val_bleu4"], xe_val["val_cider"])
        model = keras.saving.load_model(self.artifacts_dir / XE_MODEL)  # a copy: the XE model stays as it is
        compile_for_scst(model, t.scst_learning_rate, t.clipnorm)
        state = {
            "epoch": 0,
            "xe_epochs": xe_epochs,
            "xe_val_cider": xe_val["val_cider"],
            "xe_val_bleu4": xe_val["val_bleu4"],
            "best_val_cider": -math.inf,
            "best_epoch": None,
        }
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
        facts = {
            "final_model": "scst" if improved else "xe",
            "scst_epochs": state["epoch"],
            "xe_val_cider": state["xe_val_cider"],
            "scst_best_val_cider": state["best_val_cider"],
            "scst_best_epoch": state["best_epoch"],
        }
        if improved:
            log.info(
                "SCST: final model is the SCST one (val CIDEr-D %.4f > %.4f of the cross-entropy model)",
                state["best_val_cider"],
                state["xe_val_cider"],
            )
            return keras.saving.load_model(self.artifacts_dir / SCST_CHECKPOINT), facts
        log.info(
            "SCST: final model is the cross-entropy one (its val CIDEr-D %.4f; SCST's best %.4f)",
            state["xe_val_cider"],
            state["best_val_cider"],
        )
        return xe_model, facts

    def train(self, model, state: dict, sampler) -> None:
        t, seed = self.config.training, self.config.data.seed
        train_step = scst_train_step(model, sampler)
        image_ids = list(self.references)
        callbacks = keras.callbacks.CallbackList(self.callbacks, model=model) if self.callbacks else None
        if callbacks:
            callbacks.on_train_begin()
        prefetch = ThreadPoolExecutor(1, thread_name_prefix="scst-features")
        try:
            while state["epoch"] < t.scst_epochs:
                epoch = state["xe_epochs"] + state["epoch"]  # 0-based, continuing the cross-entropy epochs
                started = time.perf_counter()
                if callbacks:
                    callbacks.on_epoch_begin(epoch)
                order = np.random.default_rng([seed, epoch]).permutation(len(image_ids))
                batches = [order[i : i + self.images_per_batch] for i in range(0, len(order), self.images_per_batch)]
                losses, rewards = [], []
                batch_ids = [[image_ids[i] for i in batch] for batch in batches]
                # The next batch's features are read from the store on a thread while this one trains.
                upcoming = prefetch.submit(self.features, batch_ids[0])
                bar = tqdm(
                    batches, desc=f"SCST epoch {epoch + 1}", unit="batch", leave=False, disable=not draws_progress(sys.stderr)
                )
                for number, _ in enumerate(bar):
                    ids, features = batch_ids[number], upcoming.result()
                    if number + 1 < len(batches):
                        upcoming = prefetch.submit(self.features, batch_ids[number + 1])
                    loss, reward = self.step(train_step, sampler, ids, features, (seed, epoch * 100_000 + number))
                    losses.append(loss)
                    rewards.append(reward)
                    if callbacks:
                        callbacks.on_train_batch_end(number, {"loss": losses[-1], "reward": rewards[-1]})
                values = self.validation.score(model)
                logs = {
                    "train_loss": float(np.mean(losses)),
                    "reward": float(np.mean(rewards)),
                    **values,
                    "learning_rate": float(t.scst_learning_rate),
                    "epoch_time_seconds": round(time.perf_counter() - started, 3),
                }
                saved = values["val_cider"] > state["best_val_cider"]
                if saved:
                    log.debug(
                        "SCST: val_cider improved from %.4f to %.4f: saving %s",
                        state["best_val_cider"],
                        values["val_cider"],
                        self.artifacts_dir / SCST_CHECKPOINT,
                    )
                    with atomic_path(self.artifacts_dir / SCST_CHECKPOINT) as tmp:
                        model.save(tmp)
                    state.update(best_val_cider=values["val_cider"], best_epoch=epoch + 1)
                if self.tracker is not None:
                    self.tracker.log_metrics(epoch=epoch + 1, stage="scst", **logs)
                state["epoch"] += 1
                self.save_state(model, state)
                log.info(
                    "SCST epoch %d/%d (run epoch %d) | reward %.4f | loss %.4f | val_bleu4 %.4f | val_cider %.4f | %.1fs%s",
                    state["epoch"],
                    t.scst_epochs,
                    epoch + 1,
                    logs["reward"],
                    logs["train_loss"],
                    values["val_bleu4"],
                    values["val_cider"],
                    logs["epoch_time_seconds"],
                    f" | saved {SCST_CHECKPOINT}" if saved else "",
                )
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
        finally:
            prefetch.shutdown(cancel_futures=True)
        if callbacks:
            callbacks.on_train_end()
