"""Caption-metric monitoring, schedules and the SCST stage: the loss's sign and baseline, checkpoints, resuming after a kill."""

from __future__ import annotations

import csv
import json
import re
import signal

import helpers
import keras
import numpy as np
import pytest
from helpers import run_python, train_with_callback

from training.configs import ConfigError, config_from_dict

ENV = {"TF_DETERMINISTIC_OPS": "1", "TF_ENABLE_ONEDNN_OPTS": "0"}
SCST = dict(
    epochs=2,
    scst_epochs=2,
    scst_samples=4,
    scst_learning_rate=0.0005,
    monitor="val_cider",
    mode="max",
    dropout=0.1,
    beam_size=1,
    eval_max_images=8,
    val_caption_images=500,
)

# SIGKILL from a user callback, which also sees the SCST epochs (numbered after the cross-entropy ones).
KILL_AT = """
import os, signal, keras
at_epoch, at_batch = int(sys.argv[2]), int(sys.argv[3])
class Fault(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == (at_epoch, at_batch):
            os.kill(os.getpid(), signal.SIGKILL)
"""


def write_config(path, demo_data, artifacts, **overrides):
    return helpers.write_config(path, demo_data, artifacts, scenes_file=str(demo_data / "scenes.json"), **{**SCST, **overrides})


def metrics(artifacts):
    with open(artifacts / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k != "epoch_time_seconds"} for row in csv.DictReader(handle)]


def saved_run(artifacts):
    """(config snapshot, validation captions, tokenizer, feature builder, cross-entropy model) of the run in `artifacts`."""
    import training.models  # noqa: F401 - registers the model's classes for load_model
    from training.data.caption_loader import CaptionLoader
    from training.data.dataset import DatasetBuilder
    from training.data.preprocessor import CaptionPreprocessor
    from training.data.tokenizer import Tokenizer
    from training.features import FeatureStore

    snapshot = json.loads((artifacts / "config_snapshot.json").read_text())
    captions = CaptionPreprocessor().process(CaptionLoader("auto").load(snapshot["data"]["captions_file"]))
    val = {i: captions[i] for i in json.loads((artifacts / "splits.json").read_text())["val"]}
    store, tokenizer = FeatureStore.open(artifacts), Tokenizer.load(artifacts)
    xe = keras.saving.load_model(artifacts / "image_caption_model_xe.keras")
    return snapshot, val, tokenizer, DatasetBuilder(store.features, store.index, tokenizer, xe.max_length), xe


@pytest.fixture(scope="module")
def scst_run(demo_data, tmp_path_factory):
    """One uninterrupted run: 2 cross-entropy epochs monitored by val_cider, then 2 SCST epochs."""
    work = tmp_path_factory.mktemp("scst")
    config = write_config(work / "config.yaml", demo_data, work / "artifacts")
    done = run_python(["-m", "training.train", "--config", str(config)], env=ENV)
    return config, work / "artifacts", done.stdout + done.stderr


# -- the loss ------------------------------------------------------------------------------------
def test_baseline_is_the_mean_of_the_other_samples():
    from training.trainers.scst import self_critical_advantages

    advantages, baseline = self_critical_advantages(np.array([1.0, 2.0, 3.0, 6.0, 0.5, 0.5, 0.5, 0.5]), samples=4)
    assert baseline == pytest.approx([11 / 3, 10 / 3, 3.0, 2.0, 0.5, 0.5, 0.5, 0.5])
    assert advantages == pytest.approx([1 - 11 / 3, 2 - 10 / 3, 0.0, 4.0, 0, 0, 0, 0])


def test_one_scst_step_raises_the_probability_of_samples_better_than_their_baseline():
    import tensorflow as tf

    from training.configs import ModelConfig
    from training.data.tokenizer import Tokenizer
    from training.evaluation.inference import CaptionSampler
    from training.models import build_caption_model
    from training.models.optimization import FusedAdam
    from training.trainers.scst import SelfCriticalStep, compile_for_scst, self_critical_advantages, sequence_log_probs

    keras.utils.set_random_seed(0)
    words = "a red blue green circle square triangle and of left right".split()
    tokenizer = Tokenizer(min_word_count=1).fit(["startseq " + " ".join(words) + " endseq"])
    model = build_caption_model(
        ModelConfig(feature_dim=12, embedding_dim=8, hidden_dim=16, num_layers=1, num_heads=2, ff_dim=16, dropout=0.0),
        tokenizer.vocab_size,
        8,
    )
    compile_for_scst(model, learning_rate=0.001, clipnorm=None)
    assert isinstance(model.optimizer, FusedAdam)  # as in the cross-entropy stage
    sampler = CaptionSampler(model, tokenizer, samples=6)
    features = tf.constant(np.random.default_rng(0).normal(size=(2, 5, 12)), tf.float32)
    sequences = sampler.sample(features, (0, 1))
    assert sequences.shape == (12, 8)
    for row in sequences:  # words, then padding only after endseq; never the start or unknown-word token
        length = int(np.sum(row != 0))
        assert (row[length:] == 0).all() and set(row[:length]) <= set(range(2, tokenizer.vocab_size)) - {tokenizer.start_id}
        assert length == 8 or row[length - 1] == tokenizer.end_id
    assert np.array_equal(sequences, sampler.sample(features, (0, 1)))  # seeded: the same captions again
    assert len({tuple(s) for s in sequences}) > 6  # and random: mostly different captions

    # Image 0's sample 0 and image 1's sample 5 are rewarded above their baselines (the others' mean).
    rewards = np.array([1.0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1.0])
    advantages, _ = self_critical_advantages(rewards, 6)
    banned = sampler.banned_mask(tokenizer.vocab_size)
    rows = tf.repeat(features, 6, axis=0)
    before = sequence_log_probs(model, rows, sequences, tokenizer.start_id, banned).numpy()
    step = SelfCriticalStep(model, sampler, None, [], images_per_batch=2)
    loss = tf.function(step.update)(features, tf.constant(sequences), tf.constant(advantages, tf.float32))
    after = sequence_log_probs(model, rows, sequences, tokenizer.start_id, banned).numpy()
    assert float(loss) == pytest.approx(-np.mean(advantages * before), rel=1e-4)  # the loss the step minimised
    gained = after - before
    assert gained[0] > 0 and gained[11] > 0  # better than their baselines: more likely
    others = [i for i in range(1, 11) if not any(np.array_equal(sequences[i], sequences[j]) for j in (0, 11))]
    assert others and all(gained[i] < min(gained[0], gained[11]) for i in others)


def test_the_batch_reward_is_cider_d_of_each_sample():
    from training.data.tokenizer import Tokenizer
    from training.evaluation.cider import BatchCiderD, CiderD

    references = {
        "a": ["a red circle left of a blue square", "a red circle and a blue square", "two shapes"],
        "b": [
            "a green triangle",
            "a green triangle right of a red circle",
            "a zebra near a green triangle",
            "the triangle is green",
        ],
        "c": [],
    }
    tokenizer = Tokenizer(min_word_count=2).fit(["startseq " + r + " endseq" for refs in references.values() for r in refs])
    assert "zebra" not in tokenizer.word_index  # a reference word no sample can have: it counts in norms only
    cider = CiderD.from_references(references)
    batch = BatchCiderD(cider, tokenizer.vocabulary, tokenizer.end_id, references)
    texts = [
        "a red circle left of a blue square",
        "a red circle",
        "blue blue blue blue",
        "a green triangle",
        "a red circle right of a green triangle and a red circle left of a blue square",
        "a green",
        "a red circle",
    ]
    owners = ["a", "a", "a", "b", "b", "b", "c"]
    sequences = np.zeros((len(texts), 20), np.int32)
    for row, ids in enumerate(tokenizer.texts_to_sequences(texts)):
        ids = ids + [tokenizer.end_id] if row % 2 else ids  # with and without endseq
        sequences[row, : len(ids)] = ids
    decoded = tokenizer.sequences_to_texts(sequences, strip_special=True)  # what a sample says ("left": <unk>)
    expected = [cider.score(t, references[i], key=i) for t, i in zip(decoded, owners)]
    assert batch.scores(sequences, owners) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert expected[0] > expected[1] > 0 and expected[-1] == 0.0  # a real range of rewards, and no references: 0


# -- configuration -------------------------------------------------------------------------------
def test_config_refuses_monitor_mode_and_scst_mistakes():
    with pytest.raises(ConfigError, match="'mode' must be 'max' for monitor val_cider"):
        config_from_dict({"monitor": "val_cider"})
    with pytest.raises(ConfigError, match="'eval_every' must be 1 when monitor is val_bleu4"):
        config_from_dict({"monitor": "val_bleu4", "mode": "max", "eval_every": 2})
    with pytest.raises(ConfigError, match="'scst_samples' must be >= 2"):
        config_from_dict({"scst_epochs": 1, "scst_samples": 1})
    with pytest.raises(ConfigError, match="'lr_schedule' must be one of"):
        config_from_dict({"lr_schedule": "cosine"})
    assert config_from_dict({"monitor": "val_cider", "mode": "max", "scst_epochs": 3}).training.scst_epochs == 3


def test_warmup_cosine_and_label_smoothing_are_saved_with_the_model(tmp_path):
    from training.models import build_caption_model, masked_sparse_categorical_crossentropy
    from training.models.optimization import compile_caption_model

    config = config_from_dict(
        {
            "feature_dim": 12,
            "embedding_dim": 8,
            "hidden_dim": 16,
            "num_layers": 1,
            "num_heads": 2,
            "ff_dim": 16,
            "lr_schedule": "warmup_cosine",
            "warmup_steps": 10,
            "epochs": 2,
            "learning_rate": 0.001,
            "min_learning_rate": 1e-5,
            "label_smoothing": 0.1,
        }
    )
    model = build_caption_model(config.model, 20, 6)
    compile_caption_model(model, config, steps_per_epoch=30)
    schedule = model.optimizer._learning_rate
    assert [float(schedule(s)) for s in (0, 5, 10, 60)] == pytest.approx([0.0, 0.0005, 0.001, 1e-5], rel=1e-4)
    model.optimizer.iterations.assign(35)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert loaded.loss.label_smoothing == 0.1
    assert float(loaded.optimizer.learning_rate) == pytest.approx(float(schedule(35)), rel=1e-5)
    assert 1e-5 < float(schedule(35)) < 0.001

    targets = np.array([[3, 4, 0]])
    logits = np.log(np.full((1, 3, 20), 0.01) + np.eye(20)[[3, 4, 5]][None] * 0.8)
    smooth, plain = (float(np.mean(loss(targets, logits))) for loss in (loaded.loss, masked_sparse_categorical_crossentropy))
    assert smooth > plain > 0  # a confident right answer costs more under smoothing


# -- the two stages end to end -------------------------------------------------------------------
def test_monitor_val_cider_keeps_the_epoch_with_the_best_val_cider(scst_run):
    _, artifacts, output = scst_run
    rows = metrics(artifacts)
    xe = [row for row in rows if row["stage"] == "xe"]
    assert [row["epoch"] for row in xe] == ["1", "2"] and all(row["val_cider"] for row in xe)
    best = max(xe, key=lambda row: float(row["val_cider"]))
    assert re.search(rf": epoch {best['epoch']}/2 \|.* \| saved checkpoint\.keras$", output, re.MULTILINE)
    # The checkpoint holds that epoch's model: captioning the validation images again gives its val_cider.
    from training.callbacks.caption_metrics import CaptionValidation

    _, val, tokenizer, builder, model = saved_run(artifacts)
    rescored = CaptionValidation(tokenizer, builder, val, 500).score(model)
    assert rescored["val_cider"] == pytest.approx(float(best["val_cider"]), abs=1e-6)


def test_the_grounding_check_captions_both_models_as_the_test_is_and_counts_their_mentions(scst_run):
    _, artifacts, _ = scst_run
    from training.callbacks.caption_metrics import CaptionValidation
    from training.evaluation.evaluator import Evaluator, split_images
    from training.evaluation.objects import ObjectMentions, load_scenes
    from training.trainers.scst import GroundingCheck

    snapshot, val, tokenizer, builder, xe = saved_run(artifacts)
    final = keras.saving.load_model(artifacts / "image_caption_model_final.keras")
    grounding = ObjectMentions(load_scenes(snapshot["data"]["scenes_file"]))
    check = GroundingCheck(lambda: Evaluator(tokenizer, *split_images(builder, val, 8), grounding=grounding), beam_size=1)
    compared = check.compare(xe, final)
    # The same images' greedy captions, scored by the per-epoch validation: the same precision for each model.
    greedy = CaptionValidation(tokenizer, builder, val, 8, grounding=grounding)
    assert compared["images"] == 8 and compared["beam_size"] == 1
    assert compared["xe_object_precision"] == pytest.approx(greedy.score(xe)["val_object_precision"], abs=1e-12)
    assert compared["scst_object_precision"] == pytest.approx(greedy.score(final)["val_object_precision"], abs=1e-12)
    # Images whose caption names more / fewer objects that are not there: none against the model itself.
    assert compared["images_less_grounded"] + compared["images_more_grounded"] <= 8
    itself = check.compare(xe, xe)
    assert (itself["images_less_grounded"], itself["images_more_grounded"]) == (0, 0)
    facts = json.loads((artifacts / "run_summary.json").read_text())["scst"]
    if "grounding_check" in facts:  # the run compared the XE model with the SCST checkpoint on these images
        scst = keras.saving.load_model(artifacts / "checkpoint_scst.keras")
        assert check.compare(xe, scst) == pytest.approx(facts["grounding_check"], abs=1e-12)


def test_scst_continues_the_epochs_and_the_summary_says_which_model_is_final(scst_run):
    _, artifacts, output = scst_run
    rows = metrics(artifacts)
    assert [(row["epoch"], row["stage"]) for row in rows] == [("1", "xe"), ("2", "xe"), ("3", "scst"), ("4", "scst")]
    assert all(row["reward"] and row["val_cider"] and row["train_loss"] for row in rows[2:])
    assert all(row["val_object_precision"] and row["val_distinct_share"] and row["val_vocab_used"] for row in rows)
    summary = json.loads((artifacts / "run_summary.json").read_text())
    facts = summary["scst"]
    # Only SCST epochs as grounded as the cross-entropy model (val object precision at most 0.005 lower) are kept;
    # the SCST model is final when the best of them beats the cross-entropy model's val_cider and, on the validation
    # images captioned as the test is (eval_max_images 8, beam_size 1), its object precision is not lower at all.
    floor = facts["xe_val_object_precision"] - 0.005
    grounded = [float(r["val_cider"]) for r in rows[2:] if float(r["val_object_precision"]) >= floor]
    assert facts["scst_best_val_cider"] == (pytest.approx(max(grounded), abs=1e-9) if grounded else None)
    assert (artifacts / "checkpoint_scst.keras").is_file() == bool(grounded)
    beats = bool(grounded) and max(grounded) > facts["xe_val_cider"]
    check = facts.get("grounding_check")
    assert (check is not None) == beats  # checked only when it could change the choice
    not_less_grounded = beats and check["scst_object_precision"] >= check["xe_object_precision"]
    assert facts["final_model"] == ("scst" if not_less_grounded else "xe")
    assert facts["final_model_reason"] in output
    assert facts["xe_val_cider"] == pytest.approx(max(float(r["val_cider"]) for r in rows[:2]), abs=1e-9)
    keys = {"cider", "rouge_l", "object_precision", "object_recall", "count_accuracy", *(f"coco_bleu{n}" for n in range(1, 5))}
    assert keys <= set(summary["scores"]) and keys <= set(summary["scores_before_scst"])
    assert set(summary["bleu_scores"]) == {f"test_bleu{n}" for n in range(1, 5)}
    assert (artifacts / "image_caption_model_xe.keras").is_file()
    assert "Test scores of both stages (final model:" in output
    # Written to a pipe: no progress bar, one line per epoch in each stage (epoch, losses, validation scores, time).
    assert "\r" not in output and "━" not in output
    lines = re.findall(r": ((?:SCST )?epoch \d/2)( \(run epoch \d\))? \|.*\| val_cider \d+\.\d{4} .*\| \d+\.\ds", output)
    assert lines == [
        ("epoch 1/2", ""),
        ("epoch 2/2", ""),
        ("SCST epoch 1/2", " (run epoch 3)"),
        ("SCST epoch 2/2", " (run epoch 4)"),
    ]
    told = "\n".join(line for line in output.splitlines() if "caption collapse?" not in line)  # warnings name their epoch
    assert len(re.findall(r"\bepoch\b", told, re.IGNORECASE)) == 4 + 2  # those lines only ("run epoch" twice)
    assert re.search(r"\| \d+\.\ds \(val captions \d+\.\ds\) \|", output)  # the cost of the caption metrics


def tensorboard_steps(folder) -> dict[str, list[int]]:
    """tag -> the steps it was written at, from every TensorBoard event file in `folder`."""
    import tensorflow as tf

    steps: dict[str, list[int]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                steps.setdefault(value.tag, []).append(event.step)
    return {tag: sorted(found) for tag, found in steps.items()}


def test_both_stages_train_with_fused_adam_and_write_to_tensorboard(scst_run):
    from training.models.optimization import FusedAdam

    _, artifacts, _ = scst_run
    names = ("checkpoint_scst.keras", "image_caption_model_xe.keras", "resume_scst/epoch_00004/model.keras")
    for name in [n for n in names if (artifacts / n).is_file() or n != names[0]]:  # an SCST epoch is kept if grounded
        model = keras.saving.load_model(artifacts / name)
        assert type(model.optimizer) is FusedAdam and int(model.optimizer.iterations) > 0, name
    train, validation = tensorboard_steps(artifacts / "logs" / "train"), tensorboard_steps(artifacts / "logs" / "validation")
    assert train["epoch_loss"] == [0, 1, 2, 3]  # the run's epochs, SCST's numbered after the cross-entropy ones
    assert train["epoch_reward"] == [2, 3] and validation["epoch_cider"] == [0, 1, 2, 3]


def test_a_kill_in_the_scst_stage_resumes_in_that_stage(scst_run, demo_data, tmp_path):
    _, reference, _ = scst_run
    config = write_config(tmp_path / "config.yaml", demo_data, tmp_path / "artifacts")
    killed = train_with_callback(KILL_AT, config, 3, 1, env=ENV)  # SCST epoch 2, second batch
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    artifacts = tmp_path / "artifacts"
    assert [(row["epoch"], row["stage"]) for row in metrics(artifacts)] == [("1", "xe"), ("2", "xe"), ("3", "scst")]
    assert not (artifacts / "image_caption_model_final.keras").exists()

    # Resumed with a larger scst_epochs (an extending key): SCST continues from its last complete epoch.
    done = run_python(["-m", "training.train", "--config", str(config), "--set", "scst_epochs=3"], env=ENV)
    output = done.stdout + done.stderr
    assert "training already complete (2 of 2 epochs)" in output
    assert "SCST: resuming from" in output and "1 of 3 epoch(s) done" in output
    rows = metrics(artifacts)
    assert rows[:4] == metrics(reference)  # the epochs, stages and values of the uninterrupted run
    assert (rows[4]["epoch"], rows[4]["stage"]) == ("5", "scst")


def test_an_scst_state_of_the_earlier_format_starts_scst_again(scst_run, demo_data, tmp_path):
    import shutil

    _, reference, _ = scst_run
    artifacts = tmp_path / "artifacts"
    shutil.copytree(reference, artifacts)
    # As the earlier SCST loop wrote it: its own epoch count, no stage, no callback counters.
    (artifacts / "resume_scst" / "epoch_00004").rename(artifacts / "resume_scst" / "epoch_00002")
    old = {"epoch": 2, "xe_epochs": 2, "xe_val_cider": 0.1, "xe_val_bleu4": 0.0, "best_val_cider": 0.2, "best_epoch": 4}
    (artifacts / "resume_scst" / "epoch_00002" / "state.json").write_text(json.dumps(old))
    config = write_config(tmp_path / "config.yaml", demo_data, artifacts)
    done = run_python(["-m", "training.train", "--config", str(config), "--set", "scst_epochs=3"], env=ENV)
    output = done.stdout + done.stderr
    assert "was written by an earlier version of this program: SCST starts again" in output
    assert re.search(r"SCST epoch 3/3 \(run epoch 5\)", output)
    assert [p.name for p in (artifacts / "resume_scst").iterdir()] == ["epoch_00005"]
    assert json.loads((artifacts / "resume_scst" / "epoch_00005" / "state.json").read_text())["stage"] == "scst"


def test_sigterm_in_the_scst_stage_exits_143_and_the_resumed_run_writes_the_uninterrupted_metrics(scst_run, demo_data, tmp_path):
    from test_long_runs import interrupt_mid_epoch

    _, reference, _ = scst_run
    config = write_config(tmp_path / "config.yaml", demo_data, tmp_path / "artifacts")
    code, output = interrupt_mid_epoch(config, signal.SIGTERM, epoch=3)  # SCST epoch 2, half done
    assert code == 143, output[-3000:]
    assert "Traceback" not in output
    assert re.search(
        r"^error: SIGTERM in SCST epoch 2; nothing was saved from that epoch\. The resume point is SCST epoch 1's", output, re.M
    )
    run_python(["-m", "training.train", "--config", str(config)], env=ENV)
    assert metrics(tmp_path / "artifacts") == metrics(reference)
