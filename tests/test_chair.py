"""CHAIR on hand-made COCO-format instance annotations: the scores equal the ones worked out by hand."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from training.configs import ConfigError, config_from_dict
from training.errors import UserInputError
from training.evaluation.chair import SYNONYMS_FILE, CocoObjects, read_synonyms
from training.evaluation.evaluator import load_grounding

INSTANCES = {
    "images": [
        {"id": 1, "file_name": "COCO_val2014_000000000001.jpg"},
        {"id": 2, "file_name": "COCO_val2014_000000000002.jpg"},
        {"id": 3, "file_name": "000000000003.jpg"},
        {"id": 4, "file_name": "COCO_val2014_000000000004.jpg"},
    ],
    "categories": [
        {"id": 1, "name": "person"},
        {"id": 17, "name": "cat"},
        {"id": 18, "name": "dog"},
        {"id": 67, "name": "dining table"},
        {"id": 88, "name": "teddy bear"},
    ],
    "annotations": [
        {"image_id": 1, "category_id": 1},
        {"image_id": 1, "category_id": 18},
        {"image_id": 1, "category_id": 18},  # two dogs: still one object kind
        {"image_id": 2, "category_id": 17},
        {"image_id": 2, "category_id": 67},
        {"image_id": 3, "category_id": 88},
        {"image_id": 4, "category_id": 18},
    ],
}
# The pipeline's image ids: the file name itself; another year's name of image 2 and of image 3 (matched by number).
REFERENCES = {
    "COCO_val2014_000000000001.jpg": ["startseq a man with his dogs endseq"],
    "000000000002.jpg": ["startseq a cat sleeps on a bed endseq"],  # the bed is not annotated: the reference adds it
    "COCO_val2014_000000000003.jpg": ["startseq a stuffed toy endseq"],
    "COCO_val2014_000000000004.jpg": ["startseq a brown animal endseq"],
}
PREDICTIONS = {
    # man -> person (in), dogs -> dog (in), "hot dog" -> hot dog (not in): 3 mentions, 1 hallucinated
    "COCO_val2014_000000000001.jpg": "a man and two dogs eat a hot dog",
    # kitten -> cat, bed (from the reference), table -> dining table: 3 mentions, all in the image
    "000000000002.jpg": "a kitten sleeps on a bed near a table",
    # "baby elephant" -> elephant (not in; not a person), teddy bear (in), "train tracks" names no object: 2 mentions, 1 wrong
    "COCO_val2014_000000000003.jpg": "a baby elephant next to a teddy bear on train tracks",
    # nothing named: no mention, and its dog is not recalled
    "COCO_val2014_000000000004.jpg": "a picture of something",
}


@pytest.fixture
def instances_file(tmp_path):
    path = tmp_path / "instances_val2014.json"
    path.write_text(json.dumps(INSTANCES))
    return path


def test_chair_equals_the_hand_computed_scores(instances_file):
    coco = CocoObjects.load(instances_file, REFERENCES)
    assert coco.objects["000000000002.jpg"] == {"cat", "dining table", "bed"}
    scores = coco.score(PREDICTIONS)
    # CHAIR-i: hallucinated mentions / mentions = (1 + 0 + 1 + 0) / (3 + 3 + 2 + 0) = 2 / 8
    # CHAIR-s: captions with a hallucination / captions = 2 / 4 (images 1 and 3)
    # recall: objects named / objects = (2 + 3 + 1 + 0) / (2 + 3 + 1 + 1) = 6 / 7
    assert scores == {"chair_i": pytest.approx(2 / 8), "chair_s": pytest.approx(2 / 4), "object_recall": pytest.approx(6 / 7)}
    assert coco.precision_recall(PREDICTIONS) == {"object_precision": pytest.approx(6 / 8), "object_recall": pytest.approx(6 / 7)}


def test_each_sample_s_precision_is_one_minus_its_chair_i(instances_file):
    coco = CocoObjects.load(instances_file, REFERENCES)
    vocabulary = ("<pad>", "<unk>", "startseq", "endseq", *sorted({w for c in PREDICTIONS.values() for w in c.split()}))
    index = {w: i for i, w in enumerate(vocabulary)}
    images, captions = list(PREDICTIONS), list(PREDICTIONS.values())
    sequences = np.zeros((4, 14), np.int64)
    for row, caption in enumerate(captions):
        ids = [index[w] for w in caption.split()] + [index["endseq"]]
        sequences[row, : len(ids)] = ids
    assert coco.sample_precision(sequences, images, vocabulary) == pytest.approx([2 / 3, 1.0, 1 / 2, 0.0])
    assert coco.wrong_mentions(images, captions).tolist() == [1, 0, 1, 0]  # the hot dog, the elephant


def test_the_synonym_lists_cover_coco_s_80_categories_and_ship_with_the_package():
    phrases = read_synonyms()
    assert len({c for c in phrases.values() if c}) == 80
    assert (
        phrases[("motor", "bike")] == "motorcycle" and phrases[("hot", "dogs")] == "hot dog" and phrases[("people",)] == "person"
    )
    assert phrases[("train", "track")] is None
    from helpers import REPO

    package_data = next(line for line in (REPO / "pyproject.toml").read_text().splitlines() if line.startswith("training = ["))
    assert f'"{SYNONYMS_FILE.relative_to(REPO / "training").as_posix()}"' in package_data


def test_a_bad_file_or_an_unknown_image_is_refused_naming_the_file_and_key(instances_file, tmp_path):
    with pytest.raises(
        UserInputError, match=r"instances_val2014\.json: 1 of the run's images are not in its images\[\].*coco_instances_file"
    ):
        CocoObjects.load(instances_file, {**REFERENCES, "COCO_val2014_000000000999.jpg": ["a dog"]})
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": []')
    with pytest.raises(UserInputError, match=r"broken\.json: not a COCO instances file .*coco_instances_file"):
        CocoObjects.load(broken, REFERENCES)
    broken.write_text(json.dumps({"images": [], "categories": []}))  # no annotations
    with pytest.raises(UserInputError, match=r"broken\.json: not a COCO instances file \(KeyError: 'annotations'\)"):
        CocoObjects.load(broken, REFERENCES)


def test_the_config_key_makes_the_evaluator_s_grounding(instances_file):
    config = config_from_dict({"coco_instances_file": str(instances_file), "monitor": "val_object_precision", "mode": "max"})
    grounding = load_grounding(config.data, REFERENCES)
    assert grounding.score(PREDICTIONS)["chair_i"] == pytest.approx(0.25)
    with pytest.raises(ConfigError, match="'coco_instances_file' must be null when scenes_file is set"):
        config_from_dict({"coco_instances_file": str(instances_file), "scenes_file": "scenes.json"})


# -- a whole run on COCO-layout data ---------------------------------------------------------------------
COCO_WORDS = {"circle": "dog", "circles": "dogs", "square": "cat", "squares": "cats", "triangle": "bird", "triangles": "birds"}


def coco_layout_copy(demo_data, folder):
    """The demo images as COCO's: COCO file names, a captions_*.json whose captions say dog / cat / bird for circle /
    square / triangle, and an instances_*.json whose annotations are each image's shapes as those categories."""
    scenes = json.loads((demo_data / "scenes.json").read_text())
    (folder / "Images").mkdir(parents=True)
    images, captions, instances = [], [], []
    categories = {"dog": 18, "cat": 17, "bird": 16}
    numbers = {name: number for number, name in enumerate(sorted(scenes), start=1)}
    for name, number in numbers.items():
        file_name = f"COCO_val2014_{number:012d}.png"
        (folder / "Images" / file_name).write_bytes((demo_data / "Images" / name).read_bytes())
        images.append({"id": number, "file_name": file_name})
        instances += [{"image_id": number, "category_id": categories[COCO_WORDS[o["shape"]]]} for o in scenes[name]["objects"]]
    with open(demo_data / "captions.txt", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        words = (COCO_WORDS.get(w, w) for w in row["caption"].split())
        captions.append({"image_id": numbers[row["image"]], "caption": " ".join(words)})
    (folder / "captions_val2014.json").write_text(json.dumps({"images": images, "annotations": captions}))
    named = [{"id": i, "name": n} for n, i in categories.items()]
    (folder / "instances_val2014.json").write_text(json.dumps({"images": images, "categories": named, "annotations": instances}))


def test_a_run_on_coco_data_monitors_object_precision_rewards_scst_with_chair_and_reports_chair(demo_data, tmp_path):
    """coco_instances_file through a whole run: val_object_precision each epoch (the monitor), SCST rewarded with
    it, and the test split's CHAIR-i / CHAIR-s in the summary and report, equal to CHAIR of the test captions written."""
    from helpers import run_python, write_config

    from training.data.caption_loader import CaptionLoader
    from training.data.preprocessor import CaptionPreprocessor
    from training.run.artifacts import read_metrics, read_predictions

    coco_layout_copy(demo_data, tmp_path / "coco")
    config = write_config(
        tmp_path / "config.yaml",
        demo_data,
        tmp_path / "artifacts",
        images_path=str(tmp_path / "coco" / "Images"),
        captions_file=str(tmp_path / "coco" / "captions_val2014.json"),
        glove_path=None,
        coco_instances_file=str(tmp_path / "coco" / "instances_val2014.json"),
        monitor="val_object_precision",
        mode="max",
        epochs=2,
        scst_epochs=1,
        scst_samples=2,
        scst_grounding_weight=1.0,
        val_caption_images=12,
    )
    run_python(["-m", "training.train", "--config", str(config)], env={"TF_ENABLE_ONEDNN_OPTS": "0"})
    artifacts = tmp_path / "artifacts"

    rows = read_metrics(artifacts / "metrics.csv")
    assert [row["epoch"] for row in rows] == [1, 2, 3]  # two cross-entropy epochs, one SCST epoch
    for row in rows:
        assert 0 <= row["val_object_precision"] <= 1 and 0 <= row["val_object_recall"] <= 1, row

    predictions = read_predictions(artifacts)
    captions = CaptionPreprocessor().process(CaptionLoader("auto").load(tmp_path / "coco" / "captions_val2014.json"))
    test = {c["image_id"]: c["prediction"] for c in predictions["captions"]}
    coco = CocoObjects.load(tmp_path / "coco" / "instances_val2014.json", {i: captions[i] for i in test})
    expected = coco.score(test)
    summary = json.loads((artifacts / "run_summary.json").read_text())["scores"]
    for key in ("chair_i", "chair_s", "object_recall"):
        assert predictions["scores"][key] == pytest.approx(expected[key]) and summary[key] == pytest.approx(expected[key])
    page = (artifacts / "report.html").read_text()
    assert "CHAIR-i (mentions not in the image)" in page and "CHAIR-s (captions naming one)" in page
