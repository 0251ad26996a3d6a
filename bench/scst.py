"""Benchmark of the SCST stage against the cross-entropy stage, on the same W1 images.

Run: python bench/scst.py [--images 2000] [--captions FILE] [--data-dir DIR] [--val-images 100] [--scst-max-length N]
                          [--grounding-weight W]
Prints progress, then one JSON object as the last line.

W1 as in bench/train.py (the Flickr8k captions, its split, vocabulary and feature store of random
100 x 1536 regions, the model of training/config.yaml, batch 64), cut to the first `--images`
training images (2000: 10,000 captions). Each stage runs in its own process, so each has its own
peak memory:
  - `xe`: one cross-entropy epoch with model.fit as Trainer runs it (packed rows, no validation);
    the model is saved for the next stage;
  - `scst`: that model, one SCST epoch through SelfCriticalTrainer.train (the epoch engine; 5 samples per image,
    scst_learning_rate 1e-5 as the config's default), its validation on `--val-images`
    validation images after the epoch (not timed as training).
Each stage reports its epoch's training seconds (first batch to last, tracing included: a
callback's batch-end times), its steady captions trained per second (after the first 10 batches;
for SCST a caption trained is a sample), tokens per caption trained (SCST's samples are as long as
the model makes them), and peak RssAnon (sampled every 20 ms) and VmHWM up to its last step
(`training_memory`; the SCST stage's `memory` also covers its validation and checkpoint). The
SCST stage also reports the seconds its steady steps spent reading features (in the tf.data
pipeline, overlapped) and computing the reward, the reward's share of the steady steps (sampling
and update run in one compiled step and are not told apart), its mean reward over the first and last
20 steps, and how its sampling loop spent its steps (`sampling`: the cap on a sample's tokens, steps per batch, mean sample length,
the share of row-steps spent on samples that had ended while the batch's longest went on).
With `--grounding-weight` W > 0 the reward adds W x each sample's object precision (`scst_grounding_weight`); W1
has no instance annotations, so each image's objects are the COCO objects its references name (`CocoObjects.of`),
which costs the reward what COCO's CHAIR term would (phrases read in Python per sample; the scenes' term is
a few array lookups).
Each stage also reports its epoch's CPU seconds (all threads of its process): on cores shared with other
work, `scst_epoch_cpu_over_xe` moves less with the load than the wall-time ratio `scst_epoch_over_xe`.
And its minor page faults per batch (`epoch_minor_faults_per_batch`): pages touched for the first time, or again
after an allocator gave them back to the kernel, each a trip into the kernel (bench/RESULTS.md, the BFC allocator).
Targets (the SCST stage's): epoch seconds <= 2x the cross-entropy epoch's, peak RssAnon <= 1.5x.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import machine  # noqa: E402  (bench/machine.py)
import numpy as np  # noqa: E402
import train as w1  # noqa: E402  (bench/train.py: W1's data, store, memory sampler, step times)

from training.configs import load_config  # noqa: E402

TARGETS = {"scst_epoch_over_xe": 2.0, "scst_rss_anon_over_xe": 1.5}
WARMUP = 10  # batches before the steady rate


def stage_data(args):
    """(config, W1 split with the first `args.images` training images, tokenizer, builder) as both stages see them."""
    from training.data.caption_loader import get_max_caption_length
    from training.data.dataset import DatasetBuilder
    from training.data.tokenizer import Tokenizer
    from training.features import FeatureStore

    config = w1.w1_config()
    split = w1.load_split(Path(args.captions), 1, config)
    tokenizer = Tokenizer(min_word_count=config.data.word_count_threshold).fit(
        caption for captions in split.train.values() for caption in captions
    )
    max_length = get_max_caption_length(split.train)
    store = FeatureStore.open(w1.store_dir(1))
    builder = DatasetBuilder(store.features, store.index, tokenizer, max_length - 1, config.training.batch_size, config.data.seed)
    train = dict(list(split.train.items())[: args.images])
    val = dict(list(split.val.items())[: args.val_images])
    return config, train, val, tokenizer, builder, max_length


class CpuSeconds:
    """This process's CPU seconds (all its threads) from `start()` to the last `lap()`: the work an epoch
    took, which other processes on the machine change much less than its wall time. Also its minor page
    faults over the same span: pages touched first, or again after an allocator handed them back to the kernel."""

    def __init__(self):
        self.start()

    def start(self):
        self.begin = self.end = time.process_time()
        self.faults_begin = self.faults_end = resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def lap(self):
        self.end = time.process_time()
        self.faults_end = resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def seconds(self) -> float:
        return round(self.end - self.begin, 1)

    def faults(self) -> int:
        return self.faults_end - self.faults_begin

    def callback(self):
        import keras

        cpu = self

        class Callback(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                cpu.start()

            def on_train_batch_end(self, batch, logs=None):
                cpu.lap()

        return Callback()


class RecordedSamples:
    """The stage's BatchCiderD, which also notes, per batch, the steps the sampling loop ran (the longest
    sample) and the samples' lengths: the reward sees every batch's samples."""

    def __init__(self, batch_cider):
        self.batch_cider, self.steps, self.lengths = batch_cider, [], []

    def __getattr__(self, name):
        return getattr(self.batch_cider, name)

    def scores(self, sequences, image_ids):
        lengths = np.count_nonzero(sequences, axis=1)
        self.steps.append(int(lengths.max(initial=0)))
        self.lengths.append(lengths)
        return self.batch_cider.scores(sequences, image_ids)

    def report(self) -> dict:
        """Mean loop steps per batch, mean sample length, and the share of the loop's row-steps that
        went to rows which had already ended (the waiting the batch's longest sample imposes)."""
        rows_steps = sum(steps * len(lengths) for steps, lengths in zip(self.steps, self.lengths))
        return {
            "loop_steps_per_batch": round(float(np.mean(self.steps)), 1),
            "sample_length_mean": round(float(np.mean(np.concatenate(self.lengths))), 2),
            "row_steps_on_ended_rows_share": round(1 - sum(map(np.sum, self.lengths)) / rows_steps, 3),
        }


def timing(times, captions_per_batch: list[int]) -> dict:
    """Epoch seconds, steady captions/s and step ms from a StepTimes record."""
    batches = len(times.ends)
    warmup = min(WARMUP, batches - 1)
    steady_seconds = times.ends[-1] - times.ends[warmup - 1] if warmup else times.ends[-1] - times.begin
    steady_captions = sum(captions_per_batch[warmup:batches])
    return {
        "batches": batches,
        "captions_trained": sum(captions_per_batch[:batches]),
        "epoch_seconds": round(times.ends[-1] - times.begin, 1),
        "first_batch_seconds": round(times.ends[0] - times.begin, 2),
        "steady_captions_per_s": round(steady_captions / steady_seconds, 1),
        "steady_step_ms": round(1000 * steady_seconds / (batches - warmup), 1),
    }


def run_xe(args) -> dict:
    sampler = w1.MemorySampler()
    import keras

    from training.models import build_caption_model
    from training.models.optimization import compile_caption_model
    from training.utils import configure_precision, set_global_seed

    config, train, _, tokenizer, builder, max_length = stage_data(args)
    set_global_seed(config.data.seed)
    policy = configure_precision(config.training.use_mixed_precision)
    embedding = np.random.default_rng(0).normal(0.0, 0.4, (tokenizer.vocab_size, config.model.embedding_dim)).astype("float32")
    model = build_caption_model(config.model, tokenizer.vocab_size, max_length - 1, embedding)
    compile_caption_model(model, config)
    record: list = []
    times, cpu = w1.StepTimes(), CpuSeconds()
    w1.log(f"xe: one epoch on {len(train)} images ({sum(map(len, train.values()))} captions, policy {policy})")
    model.fit(w1.tap_batches(builder.build(train), record), epochs=1, callbacks=[times.callback, cpu.callback()], verbose=0)
    result = {
        "policy": policy,
        **timing(times, [captions for _, _, captions, _ in record]),
        "epoch_cpu_seconds": cpu.seconds(),
        "epoch_minor_faults_per_batch": round(cpu.faults() / len(times.ends)),
        "tokens_per_caption": round(sum(t for *_, t in record) / sum(c for _, _, c, _ in record), 2),
        "loss_epoch_mean": round(times.losses[-1], 3),
        "training_memory": sampler.snapshot(),
    }
    keras.saving.save_model(model, args.model)
    return result


def run_scst(args) -> dict:
    sampler_memory = w1.MemorySampler()
    import keras

    from training.callbacks.caption_metrics import CaptionValidation
    from training.trainers.scst import SelfCriticalTrainer, compile_for_scst
    from training.utils import configure_precision, set_global_seed

    _, train, val, tokenizer, builder, _ = stage_data(args)
    config = load_config(
        w1.REPO / "training" / "config.yaml",
        [
            "train_split=0.6",
            "val_split=0.2",
            "test_split=0.2",
            "glove_path=null",
            "scst_epochs=1",
            "monitor=val_cider",
            "mode=max",
            f"val_caption_images={args.val_images}",
            *([f"scst_max_length={args.scst_max_length}"] if args.scst_max_length else []),
        ],
    )
    grounding = None
    if args.grounding_weight:  # W1 has no instances file: the objects its references name (no config check to pass)
        from training.evaluation.chair import CocoObjects

        grounding = CocoObjects.of({**train, **val})
        training = dataclasses.replace(config.training, scst_grounding_weight=args.grounding_weight)
        config = dataclasses.replace(config, training=training)
    set_global_seed(config.data.seed)
    policy = configure_precision(config.training.use_mixed_precision)
    model = keras.saving.load_model(args.model, compile=False)
    compile_for_scst(model, config.training.scst_learning_rate, config.training.clipnorm)
    times, means, rewards, warm, training_memory, cpu = w1.StepTimes(), [], [], {}, {}, CpuSeconds()

    class Rewards(keras.callbacks.Callback):  # the epoch's start and its batches' rewards
        def on_epoch_begin(self, epoch, logs=None):
            times.begin = time.perf_counter()
            cpu.start()

        def on_train_batch_end(self, batch, logs=None):
            cpu.lap()
            means.append(logs["reward"])  # the epoch's mean so far: step k's own is k * mean_k - (k - 1) * mean_k-1
            rewards.append(len(means) * means[-1] - (len(means) - 1) * (means[-2] if len(means) > 1 else 0.0))
            training_memory.update(sampler_memory.snapshot())  # the peak up to the last step: validation left out
            if len(rewards) == WARMUP:  # the steps after it are the steady ones (tracing done)
                warm.update(trainer.step.step_seconds)

    with tempfile.TemporaryDirectory(prefix="bench-scst-") as artifacts:
        trainer = SelfCriticalTrainer(
            config,
            artifacts,
            tokenizer,
            builder,
            train,
            CaptionValidation(tokenizer, builder, val, args.val_images, grounding=grounding),
            callbacks=[Rewards(), times.callback],
        )
        state = {"stage": "scst", "epoch": 1, "xe_epochs": 1, "xe_val_cider": 0.0, "xe_val_bleu4": 0.0, "callbacks": {}}
        w1.log(f"scst: one epoch on {len(train)} images ({trainer.samples} samples each, policy {policy})")
        started = time.perf_counter()
        trainer.batch_cider = sampled = RecordedSamples(trainer.batch_cider)
        trainer.train(model, state)
        stage_seconds = time.perf_counter() - started
    seconds = {k: v - warm.get(k, 0.0) for k, v in trainer.step.step_seconds.items()}
    step_total = times.ends[-1] - times.ends[min(WARMUP, len(times.ends) - 1) - 1]  # the steady steps' seconds
    per_batch = [
        trainer.samples * len(ids)
        for ids in (list(train)[i : i + trainer.images_per_batch] for i in range(0, len(train), trainer.images_per_batch))
    ]
    return {
        "policy": policy,
        **timing(times, per_batch),
        "epoch_cpu_seconds": cpu.seconds(),
        "epoch_minor_faults_per_batch": round(cpu.faults() / len(times.ends)),
        "images_per_batch": trainer.images_per_batch,
        "samples_per_image": trainer.samples,
        "grounding_weight": args.grounding_weight,
        "steady_step_share": {"reward": round(seconds["reward"] / step_total, 3)},
        "steady_step_seconds": {k: round(v, 2) for k, v in seconds.items()},
        "features_note": "read by the tf.data pipeline while the previous step trains (not part of the step share)",
        "sampling": {"max_length": trainer.step.sampler.max_length, **sampled.report()},
        "mean_reward_first_and_last_20_steps": [
            round(statistics.mean(rewards[:20]), 4),
            round(statistics.mean(rewards[-20:]), 4),
        ],
        "tokens_per_caption": round(trainer.step.tokens_trained / sum(per_batch), 2),
        "epoch_with_validation_seconds": round(stage_seconds, 1),
        "training_memory": training_memory,
        "memory": sampler_memory.snapshot(),
    }


def run_worker(args, stage: str) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        stage,
        "--images",
        str(args.images),
        "--captions",
        str(args.captions),
        "--data-dir",
        str(args.data_dir),
        "--val-images",
        str(args.val_images),
        "--model",
        str(args.model),
        *(["--scst-max-length", str(args.scst_max_length)] if args.scst_max_length else []),
        "--grounding-weight",
        str(args.grounding_weight),
    ]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f"bench/scst.py: the {stage} stage failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="training images of W1 used by both stages")
    parser.add_argument("--val-images", type=int, default=100, help="validation images SCST captions after its epoch")
    parser.add_argument("--captions", default=str(w1.DEFAULT_CAPTIONS))
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=w1.DATA_DIR,
        help=f"where the W1 feature store is written and reused (default {w1.DATA_DIR})",
    )
    parser.add_argument(
        "--scst-max-length",
        type=int,
        help="the SCST stage's scst_max_length (default: the config's, derived from the training captions; "
        "the model's max_length or more: no cap)",
    )
    parser.add_argument(
        "--grounding-weight",
        type=float,
        default=0.0,
        help="the SCST stage's scst_grounding_weight (objects: the COCO objects each image's references name)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.data_dir = w1.DATA_DIR = args.data_dir.resolve()
    if args.worker:
        print(json.dumps(run_xe(args) if args.worker == "xe" else run_scst(args)))
        return
    if not Path(args.captions).is_file():
        raise SystemExit(f"bench/scst.py: captions file not found: {args.captions} (pass --captions PATH)")
    started = time.perf_counter()
    facts = machine.describe()
    report = {
        "workload": f"W1, first {args.images} training images",
        "store_write_seconds": round(w1.prepare_store(Path(args.captions), 1), 1),
    }
    with tempfile.TemporaryDirectory(prefix="bench-scst-model-") as folder:
        args.model = Path(folder) / "xe.keras"
        report["xe"] = run_worker(args, "xe")
        w1.log(f"xe: {json.dumps(report['xe'])}")
        report["scst"] = run_worker(args, "scst")
        w1.log(f"scst: {json.dumps(report['scst'])}")
    xe, scst = report["xe"], report["scst"]
    ratios = {
        "scst_epoch_over_xe": round(scst["epoch_seconds"] / xe["epoch_seconds"], 2),
        # the same in CPU seconds: less sensitive to other processes sharing the cores than the wall-time ratio
        "scst_epoch_cpu_over_xe": round(scst["epoch_cpu_seconds"] / xe["epoch_cpu_seconds"], 2),
        "scst_rss_anon_over_xe": round(
            scst["training_memory"]["peak_rss_anon_gb"] / xe["training_memory"]["peak_rss_anon_gb"], 2
        ),
        "scst_with_validation_rss_anon_over_xe": round(
            scst["memory"]["peak_rss_anon_gb"] / xe["training_memory"]["peak_rss_anon_gb"], 2
        ),
        "scst_captions_per_s_over_xe": round(scst["steady_captions_per_s"] / xe["steady_captions_per_s"], 2),
        # SCST trains on sampled captions, which a weak model makes longer than the references
        "scst_tokens_per_s_over_xe": round(
            scst["steady_captions_per_s"] * scst["tokens_per_caption"] / (xe["steady_captions_per_s"] * xe["tokens_per_caption"]),
            2,
        ),
    }
    report.update(ratios)
    report["targets"] = {k: [ratios[k], limit, ratios[k] <= limit] for k, limit in TARGETS.items()}
    report["bench_seconds"] = round(time.perf_counter() - started, 1)
    report["machine"] = machine.finish(facts)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
