"""Our CIDEr-D equals pycocoevalcap's Cider; coco_bleu equals its Bleu; object scores check captions against scenes."""

from __future__ import annotations

import json
import shutil

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from training.evaluation.cider import CiderD
from training.evaluation.metrics import CaptionEvaluator
from training.evaluation.objects import ObjectMentions, load_scenes, object_scores


def strip(caption):
    return " ".join(w for w in caption.split() if w not in ("startseq", "endseq"))


@pytest.fixture(scope="module")
def flickr8k(flickr8k_captions):
    from training.data.caption_loader import CaptionLoader
    from training.data.preprocessor import CaptionPreprocessor

    captions = CaptionPreprocessor().process(CaptionLoader("auto").load(flickr8k_captions))
    return {image_id: [strip(c) for c in texts] for image_id, texts in captions.items()}


def test_cider_d_equals_pycocoevalcap_cider_on_real_flickr8k_references(flickr8k):
    ids = list(flickr8k)[:500]
    # Cross-scored: each image's first reference against its other four.
    candidates = [flickr8k[i][0] for i in ids]
    references = [flickr8k[i][1:] for i in ids]
    ours, per_image = CiderD.corpus_score(candidates, references)
    theirs, their_per_image = Cider().compute_score(dict(zip(ids, references)), {i: [c] for i, c in zip(ids, candidates)})
    assert ours == pytest.approx(theirs, abs=1e-6)
    assert per_image == pytest.approx(list(their_per_image), abs=1e-6)
    assert 0.3 < ours < 2.0 and len(set(per_image)) > 100  # a real spread, not a constant

    # The reward's document frequencies come from another set (the training split): other scores.
    train = CiderD.from_references([flickr8k[i] for i in list(flickr8k)[1000:3000]])
    rewards = [train.score(c, r, key=i) for c, r, i in zip(candidates, references, ids)]
    assert rewards != pytest.approx(per_image, abs=1e-3)
    assert rewards[:20] == [train.score(c, r) for c, r in zip(candidates[:20], references[:20])]  # the cache changes nothing
    assert train.score(references[0][0], references[0]) > train.score("a dog runs", references[0])


@pytest.mark.skipif(shutil.which("java") is None, reason="the PTB tokenizer needs Java")
def test_coco_bleu_equals_pycocoevalcap_bleu_on_ptb_tokens(flickr8k):
    ids = list(flickr8k)[:200]
    predictions = {i: flickr8k[i][0].capitalize() + " ." for i in ids}  # PTB tokenisation has work to do
    references = {i: flickr8k[i][1:] for i in ids}
    scores = CaptionEvaluator(metrics=("bleu", "coco_bleu")).evaluate(predictions, references)
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": r} for r in references[i]] for i in ids})
    res = tokenizer.tokenize({i: [{"caption": predictions[i]}] for i in ids})
    expected, _ = Bleu(4).compute_score(gts, res, verbose=0)
    assert [scores[f"coco_bleu{n}"] for n in range(1, 5)] == pytest.approx(expected, abs=1e-12)
    assert scores["coco_bleu4"] != pytest.approx(scores["bleu4"], abs=1e-4)  # the two BLEUs really differ


SCENES = {
    "a.png": {
        "objects": [
            {"color": "red", "shape": "circle"},
            {"color": "red", "shape": "circle"},
            {"color": "blue", "shape": "square"},
        ]
    },
    "b.png": {"objects": [{"color": "green", "shape": "triangle"}]},
}


def test_object_scores_count_mentions_objects_and_numbers(tmp_path):
    path = tmp_path / "scenes.json"
    path.write_text(json.dumps(SCENES))
    predictions = {
        "a.png": "two red circles above a blue triangle",  # red circle right, blue triangle wrong; count right
        "b.png": "three shapes a green triangle",  # green triangle right; count wrong (one object)
    }
    scores = object_scores(predictions, path)
    assert scores == {"object_precision": pytest.approx(2 / 3), "object_recall": pytest.approx(3 / 4), "count_accuracy": 0.5}
    assert ObjectMentions(load_scenes(path)).parse("a large red circle and two blue squares") == (
        [("red", "circle"), ("blue", "square")],
        [(2, ("blue", "square"))],
    )
    assert object_scores({"b.png": "a picture"}, path) == {  # nothing to be precise about, no number stated
        "object_precision": None,
        "object_recall": 0.0,
        "count_accuracy": None,
    }
    with pytest.raises(ValueError, match="no scene"):
        object_scores({"c.png": "a red circle"}, path)
    with pytest.raises(FileNotFoundError, match="scenes_file"):
        load_scenes(tmp_path / "missing.json")


def test_the_demo_references_are_right_about_their_images(demo_data):
    """Every demo caption is true to its scene, so each reference scores full precision and count accuracy."""
    import csv

    with open(demo_data / "captions.txt", newline="") as handle:
        rows = list(csv.DictReader(handle))
    scenes = load_scenes(demo_data / "scenes.json")
    mentions = ObjectMentions(scenes)
    for k in range(5):  # the k-th caption of every image
        seen = {}
        for row in rows:
            seen.setdefault(row["image"], []).append(row["caption"].lower().replace(",", ""))
        predictions = {i: captions[k] for i, captions in seen.items()}
        scores = mentions.score(predictions)
        assert scores["object_precision"] == 1.0 and scores["count_accuracy"] in (1.0, None)
        assert 0.3 < scores["object_recall"] <= 1.0
    shuffled = dict(zip(predictions, list(predictions.values())[1:] + list(predictions.values())[:1]))
    assert mentions.score(shuffled)["object_precision"] < 0.5  # captions of other images are mostly wrong
