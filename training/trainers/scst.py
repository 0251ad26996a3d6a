"""Second training stage: self-critical sequence training (SCST), a policy gradient on the CIDEr-D of sampled captions.

From the best cross-entropy model, each step samples `scst_samples` captions per image in one
compiled pass (`CaptionSampler`; at most `scst_max_length` tokens each, see `sample_length_cap`),
rewards each with its CIDEr-D against the image's references (document frequencies of the training
split, computed once; the project's own tokens, no Java; the whole batch at once in numpy,
`BatchCiderD`), takes as each sample's baseline the mean reward of the image's other samples, and
minimises -(reward - baseline) * (sum of the sample's log-probs), computed on each image's samples
packed in one row (`pack_samples`). The stage trains through the same epoch engine as cross-entropy
(`engine.py`: Keras `fit` and its callbacks), with `SelfCriticalStep` as the model's `train_step`.
Epochs continue the cross-entropy stage's numbering in metrics.csv (stage `scst`) and TensorBoard;
after each one the validation CIDEr-D decides whether `checkpoint_scst.keras` is replaced, and the
state in `resume_scst/` lets a killed run continue.

Captions that stay true: with a grounding (a scenes file or COCO instances), `scst_grounding_weight` w
adds w x the sample's object precision (for COCO, 1 - its CHAIR-i) to its CIDEr-D, so of two samples
CIDEr-D rates alike, the one that names what is not in the image gets the lower reward. And with a
grounding an SCST epoch whose val object precision is lower than the cross-entropy model's by more than
GROUNDING_TOLERANCE never becomes `checkpoint_scst.keras` (`GroundedCheckpoint`).
The run's final model is the SCST one only if its best val_cider beats the cross-entropy model's and,
with a grounding, it is not less grounded (`choose_final_model`): within the tolerance on the greedy captions of
the epochs' validation images, and then, on the validation images captioned as the final model is scored and used
(up to `eval_max_images`, `beam_size`; `GroundingCheck`), not lower at all; the check also counts the images
whose captions SCST made more and less grounded. The epochs' 100 or so greedy captions name too few objects to tell
a model that is less grounded by one mention in a hundred.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from training.callbacks.caption_metrics import CaptionMetricsCallback
from training.callbacks.checkpoint import BestModelCheckpoint, ResumeState
from training.callbacks.metrics import ProgressCallback
from training.evaluation.cider import BatchCiderD, CiderD
from training.evaluation.evaluator import Evaluator
from training.evaluation.metrics import strip_wrappers
from training.models.optimization import FusedAdam
from training.run.artifacts import (
    LOGS_DIR,
    METRICS_FILE,
    SCST_CHECKPOINT,
    SCST_RESUME_DIR,
    STATE_MODEL_FILE,
    XE_MODEL,
    read_metrics,
)
from training.run.lifecycle import identity_fingerprint, latest_state, run_identity
from training.trainers.engine import epoch_callbacks, fit_epochs
from training.utils.logging import draws_progress

log = logging.getLogger(__name__)


SAMPLE_LENGTH_PERCENTILE = 95
# How much lower than the cross-entropy model's an SCST model's val object precision may be: about one mention in
# 200 (the demo's 100 validation captions name ~200 objects), so that the noise of one caption does not decide.
GROUNDING_TOLERANCE = 0.005
# The cross-entropy model's validation scores an SCST state keeps (as xe_<name>): what SCST's epochs are compared with.
XE_FACTS = ("val_cider", "val_bleu4", "val_object_precision", "val_distinct_share")


def choose_final_model(
    xe: dict, scst: dict | None, tolerance: float = GROUNDING_TOLERANCE, check: dict | None = None
) -> tuple[str, str]:
    """("scst" or "xe", why): the SCST model (validation scores `scst`, None if no epoch was kept) is final only if its
    val_cider beats the cross-entropy model's (`xe`) and, when both have a val_object_precision, it is not lower than
    the cross-entropy model's by more than `tolerance`; and with a `check` (`GroundingCheck.compare`: both models'
    object precision on the validation images captioned as the final model is), not lower there at all.

    Precision in sum, not image by image: refusing a model whose caption of any one image names more wrong objects
    was tried and not kept. It refused SCST models as grounded on the test split as the cross-entropy one, and the
    more validation images, the surer some image is worse, however grounded the model (docs/worlds.md)."""
    if scst is None:
        return "xe", "no SCST model was kept: each was less grounded than the cross-entropy model"
    if not scst["val_cider"] > xe["val_cider"]:
        return (
            "xe",
            f"SCST's best val CIDEr-D {scst['val_cider']:.4f} does not beat the cross-entropy model's {xe['val_cider']:.4f}",
        )
    xe_precision, precision = xe.get("val_object_precision"), scst.get("val_object_precision")
    if _measured(xe_precision) and not (_measured(precision) and precision >= xe_precision - tolerance):
        return "xe", (
            f"the SCST model is less grounded: val object precision {precision:.4f} against the cross-entropy model's "
            f"{xe_precision:.4f} (tolerance {tolerance}), though its val CIDEr-D {scst['val_cider']:.4f} beats {xe['val_cider']:.4f}"
        )
    grounded = f", val object precision {precision:.4f} vs {xe_precision:.4f}" if _measured(xe_precision) else ""
    if check is not None:
        where = f"the {check['images']} validation images at beam {check['beam_size']}"
        xe_checked, checked = check["xe_object_precision"], check["scst_object_precision"]
        images = ""  # a check saved by an earlier version has no image counts
        if "images_less_grounded" in check:
            images = f" (images less / more grounded: {check['images_less_grounded']} / {check['images_more_grounded']})"
        if not _measured(checked) or (_measured(xe_checked) and checked < xe_checked):
            checked_text, xe_text = _distinct_figures(checked, xe_checked)
            return "xe", (
                f"the SCST model is less grounded on {where}: object precision {checked_text} against the cross-entropy "
                f"model's {xe_text}{images}, though its val CIDEr-D {scst['val_cider']:.4f} beats {xe['val_cider']:.4f}"
            )
        grounded += f"; on {where}, object precision {checked:.4f} vs {xe_checked:.4f}{images}"
    return "scst", f"val CIDEr-D {scst['val_cider']:.4f} > {xe['val_cider']:.4f} of the cross-entropy model{grounded}"


def _measured(value) -> bool:
    return value is not None and math.isfinite(value)


def _distinct_figures(a: float, b: float) -> tuple[str, str]:
    """`a` and `b` with 4 decimals, or as many more (up to 8) as it takes for two different values to read differently:
    a refusal that reads "0.8864 against 0.8864" tells the user nothing."""
    for digits in range(4, 9):
        texts = f"{a:.{digits}f}", f"{b:.{digits}f}"
        if a == b or texts[0] != texts[1] or not (_measured(a) and _measured(b)):
            break
    return texts


class GroundingCheck:
    """Both stages' models captioned on the same validation images at `beam_size`, as the final model is scored and
    used: whether SCST made the captions less right about the images. `evaluator()` gives an `Evaluator` of those
    images with a grounding; it is made when the check runs, after training, so their features are read then."""

    def __init__(self, evaluator: Callable[[], Evaluator], beam_size: int):
        self.evaluator, self.beam_size = evaluator, int(beam_size)

    def compare(self, xe_model, scst_model) -> dict:
        """{"images", "beam_size", "xe_object_precision", "scst_object_precision" (NaN: names no object),
        "images_less_grounded", "images_more_grounded"}: the images whose SCST caption names more (fewer) objects
        that are not there than the cross-entropy model's caption of them."""
        evaluator = self.evaluator()
        grounding, images = evaluator.grounding, evaluator.image_ids
        result, wrong = {"images": len(evaluator), "beam_size": self.beam_size}, {}
        for name, model in (("xe", xe_model), ("scst", scst_model)):
            texts = [c.text for c in evaluator.caption(model, self.beam_size)]
            precision = grounding.precision_recall(dict(zip(images, texts)))["object_precision"]
            result[f"{name}_object_precision"] = float("nan") if precision is None else float(precision)
            wrong[name] = grounding.wrong_mentions(images, texts)
        result["images_less_grounded"] = int(np.sum(wrong["scst"] > wrong["xe"]))
        result["images_more_grounded"] = int(np.sum(wrong["scst"] < wrong["xe"]))
        return result


class GroundedCheckpoint(BestModelCheckpoint):
    """The best val_cider of the SCST epochs whose val_object_precision is at least `floor` (the cross-entropy model's
    minus GROUNDING_TOLERANCE): a less grounded epoch is never kept, however high its CIDEr-D."""

    def __init__(self, filepath, floor: float):
        super().__init__(filepath, monitor="val_cider", mode="max")
        self.floor = floor

    def on_epoch_end(self, epoch, logs=None):
        precision = (logs or {}).get("val_object_precision")
        if _measured(precision) and precision >= self.floor:
            super().on_epoch_end(epoch, logs)
        elif (logs or {}).get("val_cider", -math.inf) > self.best:
            log.info(  # before the epoch's progress line, which names the epoch
                "SCST: not kept though its val CIDEr-D is the best so far: val object precision %s < %.4f "
                "(the cross-entropy model's - %s)",
                f"{precision:.4f}" if _measured(precision) else "n/a",
                self.floor,
                GROUNDING_TOLERANCE,
            )


def sample_length_cap(references: dict, max_length: int, configured: int | None = None) -> int:
    """Most tokens (endseq included) a sample may have: `configured` if set, else the 95th percentile of the
    training captions' word counts plus endseq; never above the model's `max_length`.

    The sampling loop runs until the batch's longest sample ends, so a few long samples set the cost of
    every row; reference SCST implementations cap samples likewise (16-20 tokens on COCO, whose 95th
    percentile is about there). The 95th rather than the 99th percentile: the policy imitates the
    references, and CIDEr-D's length penalty already gives little reward to samples longer than them.
    A sample the cap cuts has no endseq: its reward is the CIDEr-D of its words, and its loss term the
    log-probability of those words alone, with no end term: it is trained as a caption that did not end."""
    if configured is None:
        lengths = [len(caption.split()) for captions in references.values() for caption in captions]
        configured = int(np.ceil(np.percentile(lengths, SAMPLE_LENGTH_PERCENTILE))) + 1
    return min(int(configured), int(max_length))


def sample_rewards(batch_cider, sequences, images: list, grounding=None, weight: float = 0.0, vocabulary=()) -> np.ndarray:
    """Each sample's reward: its CIDEr-D against the references of `images[row]`, plus `weight` x its object precision
    against what that image shows (`grounding`; a sample that names no object gets no bonus)."""
    reward = batch_cider.scores(sequences, images)
    if weight:
        reward = reward + weight * grounding.sample_precision(sequences, images, vocabulary)
    return reward


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


def compile_for_scst(model, learning_rate: float, clipnorm: float | None) -> None:
    """Give the model its SCST optimizer, FusedAdam as in cross-entropy (saved with it, so a resumed stage
    keeps Adam's moments). No loss: `SelfCriticalStep` computes it."""
    model.compile(optimizer=FusedAdam(learning_rate=learning_rate, clipnorm=clipnorm))
    model.optimizer.build(model.trainable_variables)


class SelfCriticalStep(keras.callbacks.Callback):
    """What one SCST step does, as the caption model's `train_step` under `fit`: sample `samples` captions
    per image (the sampler's compiled pass), reward them (BatchCiderD, in numpy through tf.numpy_function),
    and take the packed policy-gradient step. A batch is (image features, their indices in `image_ids`,
    the sampler's seed). As a callback it starts the epoch's mean loss and reward afresh.
    With a `grounding` and `grounding_weight` > 0 the reward adds the weight times each sample's object precision.
    `step_seconds` sums the reward's and the feature reads' seconds; `tokens_trained` the sampled tokens."""

    def __init__(
        self,
        policy,
        sampler,
        batch_cider: BatchCiderD,
        image_ids: list[str],
        images_per_batch: int,
        grounding=None,
        grounding_weight: float = 0.0,
    ):
        super().__init__()
        self.policy, self.sampler, self.batch_cider = policy, sampler, batch_cider  # `model` is fit's, as on any callback
        self.image_ids, self.images_per_batch = image_ids, images_per_batch
        self.grounding, self.grounding_weight = grounding, float(grounding_weight)
        self.samples, self.start_id = sampler.samples, sampler.tokenizer.start_id
        self.vocabulary = tuple(sampler.tokenizer.vocabulary) if grounding_weight else ()
        self.banned = sampler.banned_mask(policy.vocab_size)
        self.means = {"loss": keras.metrics.Mean(name="loss"), "reward": keras.metrics.Mean(name="reward")}
        self.step_seconds = {"features": 0.0, "reward": 0.0}
        self.tokens_trained = 0

    def on_epoch_begin(self, epoch, logs=None):
        for mean in self.means.values():
            mean.reset_state()

    def rewards(self, sequences: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(advantage per sample, mean reward): CIDEr-D of each sample against its image's references, plus
        grounding_weight x its object precision when that weight is set."""
        started = time.perf_counter()
        images = [self.image_ids[i] for i in indices for _ in range(self.samples)]
        reward = sample_rewards(self.batch_cider, sequences, images, self.grounding, self.grounding_weight, self.vocabulary)
        advantage, _ = self_critical_advantages(reward, self.samples)
        self.tokens_trained += int(np.count_nonzero(sequences))
        self.step_seconds["reward"] += time.perf_counter() - started
        return advantage.astype(np.float32), np.float32(reward.mean())

    def update(self, features, sequences, advantages):
        """One optimizer update on -mean(advantage * `sequence_log_probs`), computed on packed rows (`pack_samples`):
        each image's regions are projected once for its samples, and no sample is padded to max_length."""
        inputs, targets, positions, weights = pack_samples(sequences, advantages, self.samples, self.start_id)
        with tf.GradientTape() as tape:
            logits = tf.cast(self.policy((features, inputs, positions), training=False), tf.float32)
            log_probs = tf.nn.log_softmax(logits + self.banned, axis=-1)
            picked = tf.gather(log_probs, targets, batch_dims=2)
            loss = -tf.reduce_sum(tf.where(weights != 0, weights * picked, 0.0))
        gradients = tape.gradient(loss, self.policy.trainable_variables)
        self.policy.optimizer.apply(gradients, self.policy.trainable_variables)
        return loss

    def train_step(self, data):
        features, indices, seed = data
        count = tf.shape(features)[0]
        # The epoch's last, smaller batch is sampled at the full batch's shape (the sampler is traced once); the extra rows are dropped.
        full = tf.pad(features, [[0, self.images_per_batch - count], [0, 0], [0, 0]])
        full = tf.ensure_shape(full, [self.images_per_batch, *features.shape[1:]])
        sequences = self.sampler._sample(full, seed)[: count * self.samples]
        advantages, reward = tf.numpy_function(self.rewards, [sequences, indices], [tf.float32, tf.float32])
        advantages.set_shape([None])
        reward.set_shape([])
        self.means["loss"].update_state(self.update(features, sequences, advantages))
        self.means["reward"].update_state(reward)
        return {name: mean.result() for name, mean in self.means.items()}


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
        check: GroundingCheck | None = None,
    ):
        from training.evaluation.inference import CaptionSampler  # noqa: F401 - fail early if missing

        self.config, self.artifacts_dir = config, Path(artifacts_dir)
        self.tokenizer, self.builder, self.validation, self.tracker = tokenizer, builder, validation, tracker
        self.callbacks, self.check = list(callbacks or []), check
        self.references = {i: [strip_wrappers(c) for c in captions] for i, captions in train_captions.items()}
        self.cider = CiderD.from_references(self.references)  # training-split document frequencies, once
        self.batch_cider = BatchCiderD(self.cider, tokenizer.vocabulary, tokenizer.end_id, self.references)
        self.samples = config.training.scst_samples
        self.images_per_batch = max(1, config.training.batch_size // self.samples)
        self.directory = self.artifacts_dir / SCST_RESUME_DIR
        self.step: SelfCriticalStep | None = None  # the last `train`'s

    # -- data --------------------------------------------------------------------------------------
    def batches(self, first_epoch: int) -> tf.data.Dataset:
        """Endless (features, image indices, sampler seed) batches from run epoch `first_epoch` (0-based) on:
        each epoch's images in the order drawn from (seed, epoch), its batch k sampled with seed
        (seed, epoch * 100000 + k). The features are read from the store while the step before trains, in the
        store's dtype: the cast to float32 runs in TensorFlow, not in Python under the GIL the step's reward needs."""
        seed, image_ids = self.config.data.seed, list(self.references)
        shape, dtype = self.builder.feature_shape, self.builder.features.dtype  # what image_features returns

        def epochs():
            for epoch in itertools.count(first_epoch):
                order = np.random.default_rng([seed, epoch]).permutation(len(image_ids)).astype(np.int32)
                for number, begin in enumerate(range(0, len(order), self.images_per_batch)):
                    indices = order[begin : begin + self.images_per_batch]
                    started = time.perf_counter()
                    features = self.builder.image_features([image_ids[i] for i in indices])
                    if self.step is not None:
                        self.step.step_seconds["features"] += time.perf_counter() - started
                    yield features, indices, np.array([seed, epoch * 100_000 + number], np.int64)

        signature = (
            tf.TensorSpec([None, *shape], tf.as_dtype(dtype)),
            tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([2], tf.int64),
        )
        batches = tf.data.Dataset.from_generator(epochs, output_signature=signature)
        return batches.map(lambda features, indices, seed: (tf.cast(features, tf.float32), indices, seed)).prefetch(1)

    # -- state -------------------------------------------------------------------------------------
    def start(self, xe_model, xe_epochs: int):
        """(model, state) to continue from: the saved SCST state of this run, or the cross-entropy model with
        a state of none done. A state's `epoch` counts the run's epochs, the cross-entropy ones included."""
        t = self.config.training
        latest = latest_state(self.directory) if t.resume else None
        if latest and latest[1].get("stage") == "scst" and latest[1].get("xe_epochs") == xe_epochs:
            folder, state = latest
            log.info("SCST: resuming from %s: %d of %d epoch(s) done", folder, state["epoch"] - xe_epochs, t.scst_epochs)
            return keras.saving.load_model(folder / STATE_MODEL_FILE), state
        if latest:
            log.warning(
                "SCST: the saved SCST state in %s %s: SCST starts again",
                latest[0],
                f"followed {latest[1].get('xe_epochs')} cross-entropy epochs, this run has {xe_epochs}"
                if latest[1].get("stage") == "scst"
                else "was written by an earlier version of this program",
            )
        xe_val = self.validation.score(xe_model)
        log.info("SCST: cross-entropy model val BLEU-4 %.4f, CIDEr-D %.4f", xe_val["val_bleu4"], xe_val["val_cider"])
        # A copy (the XE model stays as it is), without the cross-entropy loss and metrics: SelfCriticalStep has its own.
        model = keras.saving.load_model(self.artifacts_dir / XE_MODEL, compile=False)
        compile_for_scst(model, t.scst_learning_rate, t.clipnorm)
        state = {"stage": "scst", "epoch": xe_epochs, "xe_epochs": xe_epochs, "callbacks": {}}
        return model, dict(state, **{f"xe_{name}": xe_val.get(name) for name in XE_FACTS})

    # -- the stage ---------------------------------------------------------------------------------
    def run(self, xe_model, xe_epochs: int):
        t = self.config.training
        model, state = self.start(xe_model, xe_epochs)
        if state["epoch"] < xe_epochs + t.scst_epochs and not state.get("ended"):
            self.train(model, state)
            state = latest_state(self.directory)[1]
        else:
            log.info("SCST: %d of %d epoch(s) already done", state["epoch"] - xe_epochs, t.scst_epochs)
        best = state["callbacks"].get("checkpoint", {})
        best_val_cider, best_epoch = best.get("best", -math.inf), best.get("saved_epoch")
        xe = {name: state.get(f"xe_{name}") for name in XE_FACTS}
        scst = None if best_epoch is None else self.saved_scores(best_epoch)
        choice, reason = choose_final_model(xe, scst)
        scst_model, check = None, None
        if choice == "scst" and self.check is not None and _measured(xe.get("val_object_precision")):
            scst_model = keras.saving.load_model(self.artifacts_dir / SCST_CHECKPOINT)
            check = self.check.compare(xe_model, scst_model)
            choice, reason = choose_final_model(xe, scst, check=check)
        facts = {
            "final_model": choice,
            "final_model_reason": reason,
            "scst_epochs": state["epoch"] - xe_epochs,
            "xe_val_cider": state["xe_val_cider"],
            "scst_best_val_cider": best_val_cider,
            "scst_best_epoch": None if best_epoch is None else best_epoch + 1,
            "grounding_weight": self.config.training.scst_grounding_weight,
        }
        for name in ("val_object_precision", "val_distinct_share"):
            if _measured(xe.get(name)):
                facts[f"xe_{name}"] = xe[name]
                facts[f"scst_{name}"] = None if scst is None else scst.get(name)
        if check is not None:
            facts["grounding_check"] = check
        log.info("SCST: final model is the %s one: %s", "SCST" if choice == "scst" else "cross-entropy", reason)
        if choice == "xe":
            return xe_model, facts
        return scst_model or keras.saving.load_model(self.artifacts_dir / SCST_CHECKPOINT), facts

    def saved_scores(self, epoch: int) -> dict:
        """The validation scores of the SCST checkpoint, saved after run epoch `epoch` (from 0): its metrics.csv row,
        or without one (no tracker) the checkpoint scored again."""
        rows = [
            r for r in read_metrics(self.artifacts_dir / METRICS_FILE) if r["epoch"] == epoch + 1 and r.get("stage") == "scst"
        ]
        if rows and "val_cider" in rows[-1]:
            return {k: float("nan") if v is None else v for k, v in rows[-1].items() if k.startswith("val_")}
        return self.validation.score(keras.saving.load_model(self.artifacts_dir / SCST_CHECKPOINT))

    def train(self, model, state: dict) -> None:
        """SCST epochs from `state` to `scst_epochs` through the epoch engine; each epoch's state goes to resume_scst/."""
        from training.evaluation.inference import CaptionSampler

        t, xe_epochs = self.config.training, state["xe_epochs"]
        cap = sample_length_cap(self.references, model.max_length, t.scst_max_length)
        log.info(
            "SCST: samples of at most %d tokens (endseq included; %s, the model's max_length %d)",
            cap,
            "scst_max_length"
            if t.scst_max_length
            else f"the {SAMPLE_LENGTH_PERCENTILE}th percentile of the training captions + 1",
            model.max_length,
        )
        sampler = CaptionSampler(model, self.tokenizer, self.samples, max_length=cap)
        grounding = self.validation.grounding
        self.step = SelfCriticalStep(
            model, sampler, self.batch_cider, list(self.references), self.images_per_batch, grounding, t.scst_grounding_weight
        )
        model.train_step = self.step.train_step  # this model object is the SCST stage's alone
        xe_precision = state.get("xe_val_object_precision")
        checkpoint = (
            GroundedCheckpoint(self.artifacts_dir / SCST_CHECKPOINT, floor=xe_precision - GROUNDING_TOLERANCE)
            if _measured(xe_precision)
            else BestModelCheckpoint(self.artifacts_dir / SCST_CHECKPOINT, monitor="val_cider", mode="max")
        )
        identity = run_identity(self.config)
        facts = {k: state.get(k) for k in ("stage", "xe_epochs", *(f"xe_{name}" for name in XE_FACTS))}
        resume = ResumeState(
            self.directory, identity_fingerprint(identity), {"checkpoint": checkpoint}, identity, xe_epochs + t.scst_epochs, facts
        )
        resume.restore_from = state
        caption_metrics = CaptionMetricsCallback(
            self.validation, reference_share=state.get("xe_val_distinct_share"), stage="scst"
        )
        progress = ProgressCallback(t.scst_epochs, checkpoint, caption_metrics, stage="SCST", earlier_epochs=xe_epochs)
        callbacks = epoch_callbacks(
            self.config.data.seed,
            checkpoint,
            resume,
            progress,
            caption_metrics=caption_metrics,
            logs_dir=self.artifacts_dir / LOGS_DIR,
            tracker=self.tracker,
            stage="scst",
        )

        def interrupted(what: str, saved: int) -> str:
            done = saved - xe_epochs
            return (
                f"{what} in SCST epoch {done + 1}; nothing was saved from that epoch. The resume point is "
                + (f"SCST epoch {done}'s state in {self.directory}" if done else "the end of the cross-entropy stage")
                + f". Run the same command again to continue (SCST epoch {done + 1} is trained again)."
            )

        fit_epochs(
            model,
            self.batches(state["epoch"]),
            resume,
            interrupted,
            lambda epoch: (
                f"the loss became NaN or infinite in SCST epoch {epoch - xe_epochs}; the best SCST model so far is "
                f"{checkpoint.filepath}. Lower scst_learning_rate or set clipnorm."
            ),
            initial_epoch=state["epoch"],
            epochs=xe_epochs + t.scst_epochs,
            steps_per_epoch=math.ceil(len(self.references) / self.images_per_batch),
            callbacks=[self.step, *self.callbacks, *callbacks],  # the step first: it starts the epoch's means
            verbose=1 if draws_progress() else 0,
        )
