"""Benchmark of caption decoding: batched greedy and beam-3 vs beam-3 one image at a time.

Run: python bench/decode.py [--model bench|demo] [--artifacts DIR] [--images 1000] [--batch-size 250] [--runs 3]
Prints a table, then one JSON object as the last line:
  greedy_images_per_s               GreedyDecoder.decode over all images, batch_size images per call
  beam3_images_per_s                BeamSearchDecoder(beam_size=3).decode, same images and batch size
  beam3_one_at_a_time_images_per_s  the same beam-3 decoder, decode_one_at_a_time (batches of 1)
  ratio                             beam3 / beam3_one_at_a_time (target >= 20)

The model (--model bench, the default): the bench's own, made on first use and then reused (about 1-2
minutes on 2 cores): 1000 demo images generated into bench_data/decode/demo_data (seed 0), then the
real `python -m training.train --config training/config.demo.yaml`, its paths overridden to point into
bench_data/decode, its extractor PatchGrid (frozen: the decoder reads stored features, as a Flickr8k run
on stored CNN features does) and trained for BENCH_EPOCHS epochs. The ratio measures the decoding loop,
so the bench's model has no trainable image encoder: `make demo`'s model (--model demo) runs its conv
encoder once per image however the images are batched, and that fixed cost is most of its batched time;
with such a model the JSON's `image_encoder` gives the encoder's own seconds and share.
A short training is honest for speed: each decode step costs the same whatever
the weights. What the weights do change is where captions end (images leave a batch in groups as
their search ends, so a batch still steps some done images along and runs until its longest caption
ends; one image alone stops at its own), so the JSON reports mean_caption_steps, the steps an image
needs on its own (12.6 for the full demo run, 10.5 for the bench's model; at most 18).
The images: the first --images rows of that run's feature store (PatchGrid, 64 regions x 192), read
into memory (float16, as stored) before timing, so no disk reads are timed.

Timing: each decoder is first called once on every batch shape the timed runs use (tf.function
tracing; reported as *_compile_s, the first calls' time minus what the same images take warm; the
first decoder warmed, greedy, also pays the process's one-off first-model-call costs). Then
`--runs` rounds, each timing greedy on all images, beam-3 on all images, and beam-3 one at a time on
a 1/runs share of the images, interleaved so a load spike from other processes on a shared machine
hits all three alike. Batched rates are medians over the rounds; one-at-a-time is all its images over
its total time. Beam-3 batched and one-at-a-time captions are compared as a sanity check.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

DEMO_ARTIFACTS = REPO / "artifacts" / "demo"
BENCH_DIR = Path("bench_data") / "decode"  # relative to the repository (git-ignored), as in the demo config
BENCH_IMAGES = 1000
BENCH_EPOCHS = 3  # short and fixed: see the module doc on why that is honest, and the JSON's mean_caption_steps


def finished_run(artifacts: Path) -> bool:
    from training.run.artifacts import FINAL_MODEL

    names = (FINAL_MODEL, "config_snapshot.json", "wordtoix.json", "ixtoword.json", "features.npy", "features_index.json")
    return all((artifacts / name).is_file() for name in names)


def make_bench_model() -> tuple[Path, str]:
    """Train (once) a demo-config model in bench_data/decode/; reused while its recipe is unchanged."""
    from filelock import FileLock

    data, artifacts = BENCH_DIR / "demo_data", BENCH_DIR / "artifacts"
    overrides = [
        f"images_path={data / 'Images'}",
        f"captions_file={data / 'captions.txt'}",
        f"glove_path={data / 'glove.demo.50d.txt'}",
        f"scenes_file={data / 'scenes.json'}",
        f"artifacts_dir={artifacts}",
        "feature_extractor=PatchGrid",  # the decoder on stored features: see the module doc
        f"epochs={BENCH_EPOCHS}",
        "scst_epochs=0",
        "eval_max_images=20",
    ]
    commands = [
        ["-m", "training.data.demo", str(data), "--images", str(BENCH_IMAGES), "--seed", "0"],
        [
            "-m",
            "training.train",
            "--config",
            "training/config.demo.yaml",
            "--fresh",
            *(arg for override in overrides for arg in ("--set", override)),
        ],
    ]
    made = (
        "made by this bench: "
        + "; ".join("python " + " ".join(c) for c in commands)
        + f" (a {BENCH_EPOCHS}-epoch training: decoding speed per step does not depend on how well the model is trained)"
    )
    (REPO / BENCH_DIR).mkdir(parents=True, exist_ok=True)
    recipe_file = REPO / BENCH_DIR / "recipe.json"
    with FileLock(REPO / BENCH_DIR / ".lock"):  # a second bench started meanwhile waits, then reuses the model
        if finished_run(REPO / artifacts) and recipe_file.is_file() and json.loads(recipe_file.read_text()) == commands:
            return REPO / artifacts, made
        print(f"making the bench model in {BENCH_DIR} (once; later runs reuse it)", file=sys.stderr, flush=True)
        recipe_file.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # a bench run is no experiment
        for command in commands:
            print("+ python " + " ".join(command), file=sys.stderr, flush=True)
            subprocess.run([sys.executable, *command], cwd=REPO, env=env, check=True, stdout=sys.stderr)
        recipe_file.write_text(json.dumps(commands))
    return REPO / artifacts, made


def time_call(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def warm_up(function, features: np.ndarray, batch_size: int) -> tuple[float, int]:
    """Call once per batch shape the timed runs will see; returns (seconds, images decoded)."""
    shapes = [features[:batch_size]]
    if len(features) % batch_size and len(features) > batch_size:
        shapes.append(features[-(len(features) % batch_size) :])
    return sum(time_call(function, part) for part in shapes), sum(len(part) for part in shapes)


def image_encoder_seconds(model, features: np.ndarray, batch_size: int, runs: int) -> dict | None:
    """A trainable image encoder's own time over all images (batch_size at a time, median of `runs`), which
    every decoder pays once per image however it batches; None for a model on stored features."""
    if model.image_encoder is None:
        return None
    import tensorflow as tf

    encode = tf.function(lambda batch: model.image_encoder(tf.cast(batch, model.compute_dtype), training=False))
    warm_up(encode, features, batch_size)  # trace each batch shape before timing
    batches = [features[i : i + batch_size] for i in range(0, len(features), batch_size)]
    seconds = [time_call(lambda: [encode(batch).numpy() for batch in batches]) for _ in range(runs)]
    return {"name": type(model.image_encoder).__name__, "seconds": round(statistics.median(seconds), 3)}


def choose_model(model: str, artifacts: Path | None) -> tuple[Path, str]:
    """The run to decode with (--model / --artifacts) and how it was made."""
    if artifacts is not None:
        return artifacts.resolve(), "a finished run given with --artifacts"
    if model == "demo":
        if not finished_run(DEMO_ARTIFACTS):
            raise SystemExit(f"error: no finished demo run in {DEMO_ARTIFACTS}: run `make demo`, or use --model bench")
        return DEMO_ARTIFACTS, "the demo run of `make demo` (training/config.demo.yaml, full training)"
    return make_bench_model()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=250, help="images per decode call (default 250: 4 equal batches)")
    parser.add_argument("--runs", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument(
        "--model",
        choices=("bench", "demo"),
        default="bench",
        help="bench (default): the bench's own, on stored features (made once in bench_data/); "
        "demo: artifacts/demo, the conv-encoder model of `make demo`",
    )
    parser.add_argument("--artifacts", type=Path, default=None, help="decode with this finished run instead")
    args = parser.parse_args()
    started = time.perf_counter()
    import machine  # bench/machine.py

    facts = machine.describe()

    artifacts, made = choose_model(args.model, args.artifacts)
    setup_s = time.perf_counter() - started

    from training.evaluation.inference import MIN_SHARD_IMAGES, BeamSearchDecoder, GreedyDecoder, cpu_cores
    from training.evaluation.loading import load_trained
    from training.features import FeatureStore

    _, model, tokenizer = load_trained(artifacts)
    store = FeatureStore.open(artifacts)
    if len(store) < args.images:
        raise SystemExit(f"error: {artifacts} holds features of {len(store)} images, fewer than --images {args.images}")
    features = np.array(store.features[: args.images])  # in memory, float16 as stored: no disk reads in the timing
    count = len(features)

    greedy = GreedyDecoder(model, tokenizer, batch_size=args.batch_size)
    beam = BeamSearchDecoder(model, tokenizer, beam_size=3, batch_size=args.batch_size)
    first_calls = {
        "greedy": warm_up(greedy.decode, features, args.batch_size),
        "beam3": warm_up(beam.decode, features, args.batch_size),
        "beam3_one_at_a_time": warm_up(beam.decode_one_at_a_time, features, 1),
    }

    seconds = {name: [] for name in first_calls}
    bounds = np.linspace(0, count, args.runs + 1).astype(int)
    one_at_a_time = []
    load_before = os.getloadavg()[0]
    for run, share in enumerate(slice(a, b) for a, b in zip(bounds, bounds[1:])):
        seconds["greedy"].append(time_call(greedy.decode, features))
        start = time.perf_counter()
        batched = beam.decode(features)
        seconds["beam3"].append(time.perf_counter() - start)
        start = time.perf_counter()
        one_at_a_time += beam.decode_one_at_a_time(features[share])
        seconds["beam3_one_at_a_time"].append(time.perf_counter() - start)
        print(
            f"run {run + 1}/{args.runs}: greedy {count / seconds['greedy'][-1]:.0f} img/s, beam-3 "
            f"{count / seconds['beam3'][-1]:.0f} img/s, beam-3 one at a time {(share.stop - share.start) / seconds['beam3_one_at_a_time'][-1]:.1f} img/s",
            file=sys.stderr,
            flush=True,
        )

    encoder = image_encoder_seconds(model, features, args.batch_size, args.runs)
    rates = {name: count / statistics.median(seconds[name]) for name in ("greedy", "beam3")}
    rates["beam3_one_at_a_time"] = count / sum(seconds["beam3_one_at_a_time"])
    if encoder is not None:
        encoder["share_of_beam3"] = round(encoder["seconds"] * rates["beam3"] / count, 3)
    compile_s = {name: max(0.0, first - images / rates[name]) for name, (first, images) in first_calls.items()}
    ratio = rates["beam3"] / rates["beam3_one_at_a_time"]
    same = sum(a.tokens == b.tokens for a, b in zip(batched, one_at_a_time))
    # The steps each image needs on its own: its words plus endseq, unless cut off at max_length.
    steps_needed = [min(len(c.tokens) + 1, model.max_length) for c in batched]
    shards = max(1, min(cpu_cores(), args.batch_size // MIN_SHARD_IMAGES))

    print(f"\n{'decoder':<24}{'images/s':>10}{'compile s':>11}   timed")
    for name, label in (("greedy", "greedy"), ("beam3", "beam-3"), ("beam3_one_at_a_time", "beam-3 one at a time")):
        timed = (
            f"median of {args.runs} x {count} images, batch {args.batch_size} ({shards} shards)"
            if name != "beam3_one_at_a_time"
            else f"{count} images once, batch 1"
        )
        print(f"{label:<24}{rates[name]:>10.1f}{compile_s[name]:>11.2f}   {timed}")
    print(f"ratio beam-3 batched / one at a time: {ratio:.1f}x (target >= 20x: {'met' if ratio >= 20 else 'NOT met'})")
    print(f"model: {artifacts} ({made})")
    if encoder is not None:
        print(
            f"its image encoder ({encoder['name']}) alone: {encoder['seconds']:.2f} s for the {count} images, "
            f"{encoder['share_of_beam3']:.0%} of batched beam-3's time"
        )
    print(
        f"{os.cpu_count()} CPUs, load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}; "
        f"{time.perf_counter() - started:.0f} s in all\n"
    )

    print(
        json.dumps(
            {
                "greedy_images_per_s": round(rates["greedy"], 1),
                "beam3_images_per_s": round(rates["beam3"], 1),
                "beam3_one_at_a_time_images_per_s": round(rates["beam3_one_at_a_time"], 2),
                "ratio": round(ratio, 2),
                "ratio_target": 20,
                "ratio_target_met": ratio >= 20,
                "greedy_compile_s": round(compile_s["greedy"], 2),
                "beam3_compile_s": round(compile_s["beam3"], 2),
                "beam3_one_at_a_time_compile_s": round(compile_s["beam3_one_at_a_time"], 2),
                "images": count,
                "one_at_a_time_images": count,
                "batch_size": args.batch_size,
                "shards_per_batch": shards,
                "beam_size": 3,
                "runs": args.runs,
                "seconds": {name: [round(s, 3) for s in values] for name, values in seconds.items()},
                "one_at_a_time_timing": f"all {count} images once, split into {args.runs} shares interleaved with the batched runs",
                "beam3_batched_equals_one_at_a_time": round(same / count, 4),
                "mean_caption_steps": round(float(np.mean(steps_needed)), 2),
                "max_decode_steps": int(model.max_length),
                "model": {"path": str(artifacts), "made": made, "vocab_size": tokenizer.vocab_size},
                "image_encoder": encoder,
                "features": f"first {count} rows of {artifacts / 'features.npy'} ({store.extractor_name}, "
                f"{features.shape[1]} regions x {features.shape[2]}), read into memory before timing",
                "cpus": os.cpu_count(),
                "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                "setup_s": round(setup_s, 1),
                "total_s": round(time.perf_counter() - started, 1),
                "machine": machine.finish(facts),
            }
        )
    )


if __name__ == "__main__":
    main()
