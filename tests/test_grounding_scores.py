"""Scores that catch hallucination and collapse: per-sample object precision, the grounded SCST reward, the
final-model choice that refuses a less grounded SCST model, and the collapse warning on a real model."""

from __future__ import annotations

import csv
import json
import logging
import shutil

import keras
import numpy as np
import pytest

from training.configs import ConfigError, config_from_dict
from training.data.tokenizer import Tokenizer
from training.evaluation.objects import ObjectMentions, load_scenes


def demo_captions(demo_data) -> dict[str, list[str]]:
    with open(demo_data / "captions.txt", newline="") as handle:
        rows = list(csv.DictReader(handle))
    captions: dict[str, list[str]] = {}
    for row in rows:
        captions.setdefault(row["image"], []).append(row["caption"].lower().replace(",", ""))
    return captions


def as_sequences(tokenizer: Tokenizer, texts: list[str]) -> np.ndarray:
    """Word ids, endseq, then padding: rows as the SCST sampler gives them."""
    ids = [s + [tokenizer.end_id] for s in tokenizer.texts_to_sequences(texts)]
    sequences = np.zeros((len(ids), max(map(len, ids)) + 2), np.int64)
    for row, words in enumerate(ids):
        sequences[row, : len(words)] = words
    return sequences


def test_each_sample_s_object_precision_is_the_one_object_scores_gives_its_caption(demo_data):
    captions = demo_captions(demo_data)
    mentions = ObjectMentions(load_scenes(demo_data / "scenes.json"))
    images = list(captions)
    # Each image's first caption, and another image's (mostly wrong about this one), as samples of this image.
    texts = [captions[i][0] for i in images] + [captions[images[(k + 1) % len(images)]][1] for k in range(len(images))]
    tokenizer = Tokenizer(min_word_count=1).fit(["startseq " + t + " endseq" for t in texts])
    got = mentions.sample_precision(as_sequences(tokenizer, texts), images + images, tokenizer.vocabulary)
    expected = [mentions.score({i: t})["object_precision"] for i, t in zip(images + images, texts)]
    assert got == pytest.approx([0.0 if e is None else e for e in expected], abs=1e-12)
    assert got[: len(images)].min() == 1.0 and got[len(images) :].mean() < 0.5  # true captions, then mostly wrong ones


def test_wrong_mentions_counts_each_caption_s_colour_shapes_its_image_does_not_show():
    scenes = {"a.png": [{"color": "red", "shape": "circle"}, {"color": "blue", "shape": "square"}]}
    mentions = ObjectMentions(scenes)
    captions = ["a red circle and a blue square", "two red circles and a red square", "a blue circle a blue circle", "one shape"]
    wrong = mentions.wrong_mentions(["a.png"] * 4, captions).tolist()
    assert wrong == [0, 1, 2, 0]
    for caption, n in zip(captions, wrong):  # object precision counts the same: (mentions - wrong) / mentions
        named = len(mentions.parse(caption)[0])
        precision = mentions.score({"a.png": caption})["object_precision"]
        assert precision == (None if named == 0 else pytest.approx((named - n) / named))


def test_the_grounded_reward_ranks_a_hallucinating_sample_below_a_true_one_of_the_same_cider_d():
    from training.evaluation.cider import BatchCiderD, CiderD
    from training.trainers.scst import sample_rewards

    # CIDEr-D cannot tell the two samples apart: the references say "red" and "green" alike; the scene has a red circle.
    references = {"a.png": ["a red circle", "a green circle"], "b.png": ["a blue square"]}
    scenes = {"a.png": [{"color": "red", "shape": "circle"}], "b.png": [{"color": "blue", "shape": "square"}]}
    tokenizer = Tokenizer(min_word_count=1).fit(["startseq " + r + " endseq" for refs in references.values() for r in refs])
    batch_cider = BatchCiderD(CiderD.from_references(references), tokenizer.vocabulary, tokenizer.end_id, references)
    sequences = as_sequences(tokenizer, ["a red circle", "a green circle"])
    images = ["a.png", "a.png"]
    plain = sample_rewards(batch_cider, sequences, images)
    assert plain[0] == pytest.approx(plain[1], abs=1e-12) and plain[0] > 0
    grounded = sample_rewards(batch_cider, sequences, images, ObjectMentions(scenes), 0.5, tokenizer.vocabulary)
    assert grounded == pytest.approx([plain[0] + 0.5, plain[1] + 0.0], abs=1e-12)  # the true one above by the weight


def test_the_final_model_is_never_a_less_grounded_scst_model():
    from training.trainers.scst import GROUNDING_TOLERANCE, choose_final_model

    xe = {"val_cider": 3.0, "val_object_precision": 0.98}
    better = {"val_cider": 3.5, "val_object_precision": 0.98 - GROUNDING_TOLERANCE}  # within the tolerance: accepted
    assert choose_final_model(xe, better)[0] == "scst"
    worse = {"val_cider": 3.5, "val_object_precision": 0.97}  # 0.01 lower: more than the tolerance of 0.005
    choice, reason = choose_final_model(xe, worse)
    assert choice == "xe" and "less grounded: val object precision 0.9700 against the cross-entropy model's 0.9800" in reason
    assert choose_final_model(xe, {"val_cider": 3.5, "val_object_precision": float("nan")})[0] == "xe"  # names nothing
    assert choose_final_model(xe, {"val_cider": 2.9, "val_object_precision": 1.0})[0] == "xe"  # CIDEr-D decides first
    assert choose_final_model(xe, None)[0] == "xe"
    assert choose_final_model({"val_cider": 3.0}, {"val_cider": 3.5})[0] == "scst"  # no grounding: CIDEr-D alone
    # Then on the validation images captioned as the final model is: no tolerance, the SCST model must not be lower.
    check = {"images": 200, "beam_size": 3, "xe_object_precision": 0.988, "scst_object_precision": 0.9859}
    choice, reason = choose_final_model(xe, better, check=check)
    assert choice == "xe" and "less grounded on the 200 validation images at beam 3: object precision 0.9859" in reason
    assert choose_final_model(xe, better, check=dict(check, scst_object_precision=0.988))[0] == "scst"
    close = dict(check, xe_object_precision=0.886364, scst_object_precision=0.886357)  # equal to 4 decimals
    assert (
        "object precision 0.886357 against the cross-entropy model's 0.886364" in choose_final_model(xe, better, check=close)[1]
    )
    assert choose_final_model(xe, better, check=dict(check, scst_object_precision=float("nan")))[0] == "xe"  # names none
    assert choose_final_model(xe, better, check=dict(check, xe_object_precision=float("nan")))[0] == "scst"
    assert choose_final_model(xe, worse, check=dict(check, scst_object_precision=1.0))[0] == "xe"  # the epochs' test first
    # Precision in sum decides: one image made less grounded and another more, at equal precision, is accepted.
    traded = dict(check, scst_object_precision=0.988, images_less_grounded=1, images_more_grounded=1)
    choice, reason = choose_final_model(xe, better, check=traded)
    assert choice == "scst" and "object precision 0.9880 vs 0.9880 (images less / more grounded: 1 / 1)" in reason
    worse_in_sum = dict(traded, scst_object_precision=0.9859, images_less_grounded=2, images_more_grounded=0)
    assert (
        "0.9859 against the cross-entropy model's 0.9880 (images less / more grounded: 2 / 0)"
        in choose_final_model(xe, better, check=worse_in_sum)[1]
    )


def test_grounded_monitors_and_the_reward_weight_need_scenes_or_coco_instances():
    t = config_from_dict({"scenes_file": "s.json", "monitor": "val_object_precision", "mode": "max"}).training
    assert t.monitor == "val_object_precision" and t.collapse_threshold == 0.2
    with pytest.raises(ConfigError, match="'monitor' must be val_loss, val_cider or val_bleu4 unless scenes_file"):
        config_from_dict({"monitor": "val_object_recall", "mode": "max"})
    with pytest.raises(ConfigError, match="'mode' must be 'max' for monitor val_object_precision"):
        config_from_dict({"scenes_file": "s.json", "monitor": "val_object_precision"})
    with pytest.raises(ConfigError, match="'scst_grounding_weight' must be 0 unless scenes_file or coco_instances_file"):
        config_from_dict({"scst_epochs": 1, "scst_grounding_weight": 1.0})
    with pytest.raises(ConfigError, match="'collapse_threshold' must be in \\[0, 1\\]"):
        config_from_dict({"collapse_threshold": 1.5})


def test_an_scst_epoch_less_grounded_than_the_cross_entropy_model_is_never_kept(tmp_path):
    from training.trainers.scst import GroundedCheckpoint

    checkpoint = GroundedCheckpoint(tmp_path / "checkpoint_scst.keras", floor=0.975)
    checkpoint.set_model(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
    checkpoint.on_epoch_end(3, {"val_cider": 4.2, "val_object_precision": 0.97})  # the best CIDEr-D, less grounded
    assert checkpoint.saved_epoch is None and not checkpoint.filepath.exists()
    checkpoint.on_epoch_end(4, {"val_cider": 4.0, "val_object_precision": 0.975})
    assert checkpoint.saved_epoch == 4 and checkpoint.best == 4.0 and checkpoint.filepath.is_file()
    checkpoint.on_epoch_end(5, {"val_cider": 4.1, "val_object_precision": float("nan")})  # names no object
    assert checkpoint.saved_epoch == 4


def test_collapse_warnings_follow_the_threshold_and_the_best_share_before():
    from training.evaluation.diversity import diversity, epoch_warnings

    assert diversity(["a red circle", "a red circle", "two blue squares", "a square"]) == {
        "distinct_share": 0.75,
        "vocab_used": 7.0,  # a red circle two blue squares square
    }
    rows = [
        {"epoch": 1, "stage": "xe", "val_distinct_share": 0.62},
        {"epoch": 2, "stage": "xe", "val_distinct_share": 0.59},  # 0.95x the best before: no warning
        {"epoch": 3, "stage": "xe", "val_distinct_share": 0.74},
        {"epoch": 4, "stage": "xe", "val_distinct_share": 0.33},  # a cross-entropy drop: still learning, no warning
        {"epoch": 5, "stage": "xe", "val_distinct_share": 0.15},  # under the threshold
        {"epoch": 6, "stage": "scst", "val_distinct_share": 0.66},  # 0.93x the cross-entropy model's 0.71
        {"epoch": 7, "stage": "scst", "val_distinct_share": 0.60},  # 0.85x the cross-entropy model's 0.71
        {"epoch": 8, "stage": "scst", "val_distinct_share": 0.80},
        {"epoch": 9, "stage": "scst", "val_distinct_share": 0.70},  # 0.875x the best earlier SCST epoch's 0.80
        {"epoch": 10, "stage": "scst"},  # not measured that epoch
    ]
    warnings = epoch_warnings(rows, threshold=0.2, xe_share=0.71)
    assert [w.split(":")[0] for w in warnings] == [f"caption collapse? epoch {n}" for n in ("5 (xe)", "7 (scst)", "9 (scst)")]
    assert "only 15.0% of the captions are distinct (collapse_threshold 20%)" in warnings[0]
    assert "71.0% of the cross-entropy model" in warnings[1] and "below 0.9x the 80.0% of the best earlier epoch" in warnings[2]


# -- the collapse warning, on real models ----------------------------------------------------------------------
def run_parts(artifacts):
    """(model, tokenizer, dataset builder, the test split's captions, config) of a finished run."""
    import training.models  # noqa: F401 - registers the model's classes for load_model
    from training.configs import Config
    from training.data.caption_loader import CaptionLoader
    from training.data.dataset import DatasetBuilder
    from training.data.preprocessor import CaptionPreprocessor
    from training.features import FeatureStore

    snapshot = json.loads((artifacts / "config_snapshot.json").read_text())
    config = Config.from_dict(snapshot)
    captions = CaptionPreprocessor().process(CaptionLoader("auto").load(config.data.captions_file))
    test = {i: captions[i] for i in json.loads((artifacts / "splits.json").read_text())["test"]}
    model = keras.saving.load_model(artifacts / "image_caption_model_final.keras")
    store, tokenizer = FeatureStore.open(artifacts), Tokenizer.load(artifacts)
    return model, tokenizer, DatasetBuilder(store.features, store.index, tokenizer, model.max_length), test, config


def test_the_collapse_warning_fires_on_a_model_that_gives_one_caption_to_every_image(trained_run, demo_data, tmp_path, caplog):
    from training.evaluation.report import build_report, collapse_warnings
    from training.evaluation.split import evaluate_split

    artifacts, output = trained_run
    # The trained tiny model of the shared run: its captions differ from image to image, and nothing warned.
    summary = json.loads((artifacts / "run_summary.json").read_text())
    assert summary["scores"]["distinct_share"] > 0.2 and "caption collapse" not in output
    model, tokenizer, builder, test, config = run_parts(artifacts)
    assert {"val_distinct_share", "val_vocab_used"} <= set(next(csv.DictReader(open(artifacts / "metrics.csv"))))

    # The same model with its output bias set so that one word wins every step: one caption for every image.
    bias = model.output_layer.bias
    forced = np.full(bias.shape, -30.0, np.float32)
    forced[tokenizer.word_index["circle"]] = 30.0
    bias.assign(forced)
    copy = tmp_path / "run"
    shutil.copytree(artifacts, copy)
    with caplog.at_level(logging.WARNING, logger="training.evaluation.split"):
        scenes = ObjectMentions(load_scenes(demo_data / "scenes.json"))
        scores = evaluate_split(model, tokenizer, builder, test, config, copy, beam_size=1, show=0, grounding=scenes)
    assert scores["distinct_share"] == pytest.approx(1 / len(test)) and scores["vocab_used"] == 1.0
    assert scores["object_precision"] is None  # "circle circle ...": no colour+shape named
    assert f"caption collapse? the test split: only {1 / len(test):.1%} of the captions are distinct" in caplog.text

    # The run's report says so too, when its test scores are the collapsed model's.
    summary["scores"].update(scores)
    (copy / "run_summary.json").write_text(json.dumps(summary))
    page = build_report(copy).read_text()
    assert "<h2>Caption collapse</h2>" in page and "caption collapse? the test captions: only" in page
    snapshot = json.loads((artifacts / "config_snapshot.json").read_text())
    assert collapse_warnings(artifacts, json.loads((artifacts / "run_summary.json").read_text()), snapshot) == []
