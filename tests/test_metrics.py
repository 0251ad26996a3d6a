"""Caption metrics: our BLEU/METEOR/ROUGE-L/CIDEr equal NLTK's and pycocoevalcap's own on the same input."""

from __future__ import annotations

import csv
import logging
import shutil

import pytest
from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu, sentence_bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from training.evaluation.metrics import BLEUScore, CaptionEvaluator

REFERENCES = {
    "dog.jpg": [
        "startseq a black dog runs across the green grass endseq",
        "A dog is running on grass.",
        "a black dog plays outside",
    ],
    "kids.jpg": [
        "two children play in the sand at the beach",
        "Kids building a sandcastle .",
        "two young kids are playing on a sandy beach",
    ],
    "bike.jpg": [
        "a man rides a bike down a dirt path",
        "a cyclist on a mountain trail",
        "a man in a helmet is riding his bicycle",
    ],
    "surf.jpg": ["a surfer rides a large wave", "a person surfing in the ocean", "a man on a surfboard"],
    "climb.jpg": ["a woman climbs a rock wall", "a climber on a red rock face", "a person is rock climbing"],
}
PREDICTIONS = {
    "dog.jpg": "a black dog runs on the grass",
    "kids.jpg": "two children are playing on the beach.",
    "bike.jpg": "a man rides a bike",
    "surf.jpg": "a man is surfing a wave",
    "climb.jpg": "a dog runs in the snow",
}
IDS = list(PREDICTIONS)
WEIGHTS = [(1.0,), (0.5, 0.5), (1 / 3, 1 / 3, 1 / 3), (0.25, 0.25, 0.25, 0.25)]


def whitespace_tokens(text):
    return [w for w in text.lower().split() if w not in ("startseq", "endseq")]


REF_TOKENS = [[whitespace_tokens(r) for r in REFERENCES[i]] for i in IDS]
HYP_TOKENS = [whitespace_tokens(PREDICTIONS[i]) for i in IDS]


@pytest.fixture(scope="module")
def reference_meteor():
    # Constructed before the evaluator runs: each METEOR JVM takes seconds to load, so the two load together.
    return Meteor() if shutil.which("java") else None


@pytest.fixture(scope="module")
def evaluated(reference_meteor):
    evaluator = CaptionEvaluator()
    return evaluator, evaluator.evaluate(PREDICTIONS, REFERENCES)


@pytest.mark.parametrize("smoothing", [None, "method1"])
def test_bleu_equals_nltk_corpus_bleu(smoothing):
    function = getattr(SmoothingFunction(), smoothing) if smoothing else None
    expected = [corpus_bleu(REF_TOKENS, HYP_TOKENS, weights=w, smoothing_function=function) for w in WEIGHTS]
    scores = BLEUScore(smoothing=smoothing).corpus_score(REF_TOKENS, HYP_TOKENS)
    assert scores == {f"bleu{n}": pytest.approx(e, abs=1e-12) for n, e in enumerate(expected, 1)}
    # Strings and dicts are the same input, whitespace-tokenised and lowercased.
    refs = {i: [" ".join(r) for r in rs] for i, rs in zip(IDS, REF_TOKENS)}
    assert BLEUScore(smoothing=smoothing).corpus_score(refs, {i: PREDICTIONS[i] for i in IDS}) == scores


def test_bleu_sentence_scores_equal_nltk():
    method1 = SmoothingFunction().method1
    scores = BLEUScore(max_n=2).sentence_scores(REF_TOKENS, HYP_TOKENS)
    for refs, hyp, image_scores in zip(REF_TOKENS, HYP_TOKENS, scores):
        assert set(image_scores) == {"bleu1", "bleu2"}
        assert image_scores["bleu2"] == pytest.approx(sentence_bleu(refs, hyp, (0.5, 0.5), method1), abs=1e-12)
    with pytest.raises(ValueError, match="method1"):
        BLEUScore(smoothing="laplace")


@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR and the PTB tokenizer need Java")
def test_evaluator_equals_pycocoevalcap_on_ptb_tokens(evaluated, reference_meteor):
    evaluator, scores = evaluated
    assert set(scores) == {
        "bleu1",
        "bleu2",
        "bleu3",
        "bleu4",
        "meteor",
        "rouge_l",
        "cider",
        "coco_bleu1",
        "coco_bleu2",
        "coco_bleu3",
        "coco_bleu4",
    }
    for n, weights in enumerate(WEIGHTS, 1):
        assert scores[f"bleu{n}"] == pytest.approx(corpus_bleu(REF_TOKENS, HYP_TOKENS, weights=weights), abs=1e-12)

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": " ".join(r)} for r in REF_TOKENS[k]] for k, i in enumerate(IDS)})
    res = tokenizer.tokenize({i: [{"caption": PREDICTIONS[i]}] for i in IDS})
    assert res["kids.jpg"] == ["two children are playing on the beach"]  # PTB drops the full stop
    for name, scorer in (("meteor", reference_meteor), ("rouge_l", Rouge()), ("cider", Cider())):
        expected, per_image = scorer.compute_score(gts, res)
        assert scores[name] == pytest.approx(expected, abs=1e-12), name
        assert [row[name] for row in evaluator.per_image] == pytest.approx(list(per_image), abs=1e-12), name
    assert 0 < scores["cider"] and scores["rouge_l"] < 1


def test_per_image_rows_and_csv(evaluated, tmp_path):
    evaluator, _ = evaluated
    method1 = SmoothingFunction().method1
    assert [row["image_id"] for row in evaluator.per_image] == IDS
    for refs, hyp, row in zip(REF_TOKENS, HYP_TOKENS, evaluator.per_image):
        assert row["prediction"] == " ".join(hyp)
        assert row["bleu4"] == pytest.approx(sentence_bleu(refs, hyp, WEIGHTS[3], method1), abs=1e-12)

    path = evaluator.write_per_image_csv(tmp_path / "logs" / "bleu_scores.csv")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert {"image_id", "prediction", "bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider"} <= set(rows[0])
    assert [r["image_id"] for r in rows] == IDS
    assert [float(r["cider"]) for r in rows] == pytest.approx([r["cider"] for r in evaluator.per_image])
    assert [p.name for p in path.parent.iterdir()] == ["bleu_scores.csv"]  # no temporary file left behind


def test_without_java_meteor_is_absent_and_others_use_whitespace_tokens(monkeypatch, caplog):
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None)
    with caplog.at_level(logging.WARNING, logger="training.evaluation.metrics"):
        scores = CaptionEvaluator().evaluate(PREDICTIONS, REFERENCES)
    assert "meteor" not in scores and "java not found" in caplog.text
    gts = {i: [" ".join(r) for r in refs] for i, refs in zip(IDS, REF_TOKENS)}
    res = {i: [" ".join(h)] for i, h in zip(IDS, HYP_TOKENS)}
    assert scores["rouge_l"] == pytest.approx(Rouge().compute_score(gts, res)[0], abs=1e-12)
    assert scores["cider"] == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-12)


def test_evaluator_refuses_bad_input(tmp_path):
    with pytest.raises(ValueError, match="rouge_l"):
        CaptionEvaluator(metrics=("bleu", "spice"))
    evaluator = CaptionEvaluator(metrics=("bleu",))
    with pytest.raises(RuntimeError, match="evaluate"):
        evaluator.write_per_image_csv(tmp_path / "scores.csv")
    with pytest.raises(ValueError, match="no predictions"):
        evaluator.evaluate({}, REFERENCES)
    with pytest.raises(ValueError, match="no reference captions"):
        evaluator.evaluate({"cat.jpg": "a cat"}, REFERENCES)
    assert set(evaluator.evaluate(PREDICTIONS, REFERENCES)) == {"bleu1", "bleu2", "bleu3", "bleu4"}
