"""Benchmark of the feature store at Flickr8k scale: what a rerun with another seed and a captions file
with 10 more images cost, against extracting every image again with EfficientNetB3.

Run: python bench/store.py [--images 8091] [--rounds 3]
Builds, in a temporary folder, a store of `--images` rows shaped like EfficientNetB3 at 300 px
(100 regions x 1536 channels, float16: 2.5 GB for Flickr8k's 8091 images) with a cheap stand-in
extractor (a 1x1 convolution over 10x10 px images), then times, `--rounds` times each:
  reuse_seconds          FeatureStore.build over a shuffled 90% of the images (a new seed / split / max_images)
  grow_10_seconds        FeatureStore.build over every image plus 10 new ones (copies the old rows)
  b3_seconds_per_image   the baseline: EfficientNetB3 (weights=None: same compute as ImageNet weights) on
                         300 px images, through the same store code, per image
and prints medians, the extrapolated cost of re-extracting all images with B3, and the ratios, as
one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from training.features import BaseFeatureExtractor, FeatureStore, get_feature_extractor  # noqa: E402


class WideGrid(BaseFeatureExtractor):
    """Stand-in with EfficientNetB3's output shape at 300 px, at a fraction of its compute."""

    NAME = "BenchWideGrid"
    FEATURE_DIM = 1536
    DEFAULT_IMAGE_SIZE = (10, 10)
    MIN_IMAGE_SIZE = 10

    def build_model(self):
        inputs = keras.Input((*self.image_size, 3))
        return keras.Model(
            inputs, keras.layers.Conv2D(self.FEATURE_DIM, 1, kernel_initializer=keras.initializers.GlorotUniform(seed=0))(inputs)
        )


def write_images(folder: Path, names: list[str], size: int) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / name)


def timed(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8091, help="images in the store (default: Flickr8k's 8091)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import machine  # bench/machine.py

    facts = machine.describe()
    work = Path(tempfile.mkdtemp(prefix="bench-store-"))
    try:
        names = [f"img_{i:05d}.png" for i in range(args.images + 10 * args.rounds)]
        write_images(work / "images", names, size=10)
        extractor = WideGrid(batch_size=64)
        seconds, store = timed(
            lambda: FeatureStore.build(
                work / "store", extractor, names[: args.images], work / "images", chunk_size=1024, verbose=0
            )
        )
        gigabytes = store.features.nbytes / 1e9
        print(
            f"built the store: {len(store)} x {store.features.shape[1:]} float16, {gigabytes:.2f} GB in {seconds:.1f} s",
            file=sys.stderr,
            flush=True,
        )
        del store

        reuse, grow = [], []
        for round_ in range(args.rounds):
            subset = random.Random(round_).sample(names[: args.images], int(0.9 * args.images))
            seconds, store = timed(lambda: FeatureStore.build(work / "store", extractor, subset, work / "images", verbose=0))  # noqa: B023 - called at once
            assert store.extracted == 0, store.extracted
            reuse.append(seconds)
            wanted = names[: args.images + 10 * (round_ + 1)]
            seconds, store = timed(lambda: FeatureStore.build(work / "store", extractor, wanted, work / "images", verbose=0))  # noqa: B023 - called at once
            assert store.extracted == 10, store.extracted
            grow.append(seconds)
            print(f"round {round_ + 1}: reuse {reuse[-1]:.3f} s, grow by 10 {grow[-1]:.1f} s", file=sys.stderr, flush=True)
            del store

        b3 = get_feature_extractor("EfficientNetB3", weights=None, batch_size=16)
        b3_names = [f"b3_{i:02d}.png" for i in range(32)]
        write_images(work / "b3_images", b3_names, size=300)
        FeatureStore.build(work / "b3_warmup", b3, b3_names[:16], work / "b3_images", verbose=0)  # builds and traces
        per_image = []
        for round_ in range(args.rounds):
            seconds, _ = timed(lambda: FeatureStore.build(work / f"b3_{round_}", b3, b3_names, work / "b3_images", verbose=0))  # noqa: B023 - called at once
            per_image.append(seconds / len(b3_names))
            print(f"round {round_ + 1}: EfficientNetB3 {per_image[-1]:.3f} s/image", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    b3_all = statistics.median(per_image) * (args.images + 10)
    result = {
        "images": args.images,
        "store_gb": round(gigabytes, 2),
        "cpu_count": os.cpu_count(),
        "reuse_seconds": round(statistics.median(reuse), 3),
        "grow_10_seconds": round(statistics.median(grow), 2),
        "b3_seconds_per_image": round(statistics.median(per_image), 4),
        "b3_reextract_all_seconds": round(b3_all, 1),
        "reextract_over_reuse": round(b3_all / statistics.median(reuse), 1),
        "reextract_over_grow_10": round(b3_all / statistics.median(grow), 1),
        "machine": machine.finish(facts),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
