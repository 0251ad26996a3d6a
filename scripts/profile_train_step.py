"""Where a W1 training step goes: TensorFlow's profiler over a few steps, self time per op type.

Run: .venv/bin/python scripts/profile_train_step.py [--model ours|peer] [--steps 10] [--top 25]

Builds the model of training/config.yaml (ours, or bench/train.py's plain Keras peer) at W1's
shapes on random data (ours: 13 packed rows of 5 captions of 9-15 tokens, 100 x 1536 regions;
the peer: 64 single captions padded to 34 tokens, as W1 pads them), vocabulary 2284 (W1's), the precision policy
configure_precision picks, trains a few warm-up steps, then profiles `--steps` steps. Prints the
op types by their share of the profiled op time and, last, one JSON line of the same.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import numpy as np  # noqa: E402

VOCAB, ROWS, ROW_LENGTH, REGIONS, PEER_BATCH, PEER_LENGTH = 2284, 13, 64, 100, 64, 34


def our_batches(rng):
    features = rng.standard_normal((ROWS, REGIONS, 1536)).astype("float32")
    tokens, positions, targets = (np.zeros((ROWS, ROW_LENGTH), np.int32) for _ in range(3))
    for row in range(ROWS):
        start = 0
        for length in rng.integers(9, 16, size=5):
            end = min(start + length, ROW_LENGTH)
            tokens[row, start:end] = rng.integers(3, VOCAB, end - start)
            targets[row, start:end] = rng.integers(3, VOCAB, end - start)
            positions[row, start:end] = np.arange(end - start)
            start = end
    return (features, tokens, positions), targets


def peer_batches(rng):
    features = rng.standard_normal((PEER_BATCH, REGIONS, 1536)).astype("float32")
    tokens, targets = (np.zeros((PEER_BATCH, PEER_LENGTH), np.int32) for _ in range(2))
    for row, length in enumerate(rng.integers(9, 16, size=PEER_BATCH)):
        tokens[row, :length] = rng.integers(3, VOCAB, length)
        targets[row, :length] = rng.integers(3, VOCAB, length)
    return (features, tokens), targets, (targets > 0).astype("float32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["ours", "peer"], default="ours")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()

    import keras
    import tensorflow as tf
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin  # the TensorBoard plugin's converter

    from training.configs import load_config
    from training.models import build_caption_model
    from training.models.optimization import compile_caption_model
    from training.utils import configure_precision

    config = load_config(REPO / "training" / "config.yaml", ["glove_path=null"])
    policy = configure_precision(config.training.use_mixed_precision)
    rng = np.random.default_rng(0)
    if args.model == "ours":
        model = build_caption_model(config.model, VOCAB, 40, np.zeros((VOCAB, config.model.embedding_dim), "float32"))
        compile_caption_model(model, config)
        batch = our_batches(rng)
    else:
        import train as bench_train

        model = bench_train.build_peer_model(config.model, VOCAB, PEER_LENGTH, REGIONS)
        model.compile(
            optimizer=keras.optimizers.Adam(config.training.learning_rate, clipnorm=config.training.clipnorm),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            weighted_metrics=["sparse_categorical_accuracy"],
        )
        batch = peer_batches(rng)
    dataset = tf.data.Dataset.from_tensors(batch).repeat()
    model.fit(dataset, steps_per_epoch=10, epochs=1, verbose=0)  # tracing and warm-up

    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        model.fit(dataset, steps_per_epoch=args.steps, epochs=1, verbose=0)
        tf.profiler.experimental.stop()
        [xspace] = [str(p) for p in Path(logdir).rglob("*.xplane.pb")]
        data, ok = _pywrap_profiler_plugin.xspace_to_tools_data([xspace], "framework_op_stats", {})
    if not ok:
        raise SystemExit("profile_train_step.py: the profiler produced no op statistics")
    # A list of data tables (Google Charts' format); the first holds one row per op (its 500 costliest).
    table = json.loads(data)[0]
    columns = [column["id"] for column in table["cols"]]
    by_type: dict[str, float] = defaultdict(float)
    for row in table["rows"]:
        values = dict(zip(columns, (cell.get("v") for cell in row["c"])))
        if values["type"] != "IDLE":  # threads waiting: other processes on a shared machine, or the input pipeline
            by_type[values["type"]] += float(values["total_self_time"])
    total = sum(by_type.values())
    shares = sorted(((t, us / total) for t, us in by_type.items()), key=lambda item: -item[1])
    matmul = sum(share for t, share in shares if "MatMul" in t or t == "Einsum")  # MatMul, _MklBatchMatMulV2, ...
    print(
        f"{args.model}, {policy}: {total / 1000 / args.steps:.1f} ms of op time per step; matmuls {matmul:.1%}", file=sys.stderr
    )
    for op_type, share in shares[: args.top]:
        print(f"  {op_type:32s} {share:6.1%}", file=sys.stderr)
    print(
        json.dumps(
            {
                "model": args.model,
                "policy": policy,
                "op_ms_per_step": round(total / 1000 / args.steps, 1),
                "matmul_share": round(matmul, 3),
                "load_average_1m": round(os.getloadavg()[0], 2),
                "top_op_types": {t: round(s, 3) for t, s in shares[: args.top]},
            }
        )
    )


if __name__ == "__main__":
    main()
