"""Benchmark of training and decoding at Flickr8k scale: workload W1, region and pooled features.

Run: python bench/train.py [--rows region,pooled] [--epochs 1] [--scale 5] [--steps 300] [--no-memory] [--peer-steps 150]
                          [--captions FILE] [--data-dir DIR]
Prints progress, then one JSON object as the last line (figures per row, the 5x-store memory test,
the machine, and which targets are met).

W1 is real in everything but pixels: the Flickr8k captions (../shared/data/flickr8k_captions.txt),
a seeded 0.6/0.2/0.2 split by image, vocabulary threshold 5, random image features
(numpy.random.default_rng(0)) in a real feature store on disk shaped like EfficientNetB3 at 300 px
(8091 images x 100 regions x 1536 channels, float16, memory-mapped), a random 200-d embedding
matrix in place of GloVe, the model settings of training/config.yaml, batch 64, CPU. The pooled
row is the same with use_regions: false (the store's regions averaged to one 1536-d vector).

Each row runs in its own process (clean peak-memory figures and dtype policy), which:
  - measures this machine's dense matmul rate (tf.matmul, 2048x2048 float32, and bfloat16 when
    the run computes in bfloat16) before and after training: the median of both sets is the
    reference, so the ratio compares figures of the same minutes on a shared machine;
  - trains `--epochs` full epochs with model.fit exactly as Trainer does (compile_caption_model,
    DatasetBuilder.build), no validation; `epoch_seconds` is the wall time of the first epoch,
    tracing included; `steady_captions_per_s` counts captions over the batches after the first
    `warmup` ones;
  - computes the FLOPs of every batch it trained from its actual shape (formula below) and
    divides the steady batches' sum by their time: `train_gflop_per_s`, and its ratio to the
    matmul rate;
  - captions `--decode-images` test images with GreedyDecoder and BeamSearchDecoder(beam 3)
    (default batch 64) after one warm-up batch of each, and reports images/s;
  - samples RssAnon (the process's own memory, not the page cache of the memory-mapped store)
    every 20 ms, and reads VmHWM (peak resident, page cache of the store included).
After each of our rows, two peer rows (`--peer-steps`, 0: none) run, each in its own process: the
decoder a user writes from the keras.io captioning example (keras.layers.MultiHeadAttention,
pre-norm, the dims of training/config.yaml, the same precision policy, Adam with the same settings,
seeded without TensorFlow's op determinism as that example is), trained with plain model.fit on one
caption per row, its image's regions projected for each caption (for the pooled row, the one pooled
vector), on the same store, for a fixed window of steps. The peer (`peer`) batches as the tf.data
guides teach for variable-length text: captions grouped by length (`bucket_by_sequence_length`,
buckets 2 tokens wide) and each batch padded to its own longest caption; its `token_efficiency` is
counted as ours. The padded peer (`padded_peer`, the peer of earlier runs, kept for history) pads
every caption to W1's max_length. Our row gains `peer_captions_per_s` (steady, after 10 warm-up
steps), `speedup_vs_peer` (ours / the bucketing peer's steady captions per second) and
`speedup_vs_padded_peer`.
The memory test builds the store at `--scale` times the images (5x: 40,455 images, 12.4 GB; each
Flickr8k image and its captions `scale` times under new ids, the features copied from the 1x
store), trains `--steps` steps on it with region features and reports the peak RssAnon next to
the 1x region row's; the big store is deleted when the benchmark ends. The 1x store (2.5 GB) is
kept in bench_data/ (git-ignored) and reused while its fingerprint matches.

Time on 2 cores: ~4 min quiet, ~7 min when other jobs share the machine (+30 s the first time,
to write the 1x store): two ~1 min epochs, decoding, ~1 min writing the 5x store, 300 steps;
plus the four peer rows of 150 steps (the padded peer's the slowest). 34 min on the AMD EPYC at
a load average of 9-13.

FLOPs per training step (matmul multiply-adds x 2; element-wise work, softmax, layer norm and
the optimizer are not counted). U rows (images) of padded length L, R regions of C channels,
model width D, feed-forward F, word vectors E, vocabulary V, N layers:
  forward = U*R*C*D (region projection) + U*L*E*D (word projection) + U*L*D*V (logits)
          + N * [4*U*L*D^2 (self q,k,v,o) + 2*U*L^2*D (self scores, mix)
                 + 2*U*L*D^2 (cross q,o) + 2*U*R*D^2 (cross k,v) + 2*U*L*R*D (cross scores, mix)
                 + 2*U*L*D*F (feed-forward)]
  step    = 3 * forward - U*R*C*D - U*L*E*D   (backward = 2x forward, except the two input
                                              projections, whose inputs need no gradient)
Padding positions are counted (they are computed): `token_efficiency` is the share of real tokens.

Useful FLOPs count the same formula for the model computing each caption alone and unpadded: L is
the caption's own length (its self-attention over itself only), and the image terms (region
projection, cross-attention keys/values) once per image of the epoch, so neither padding, packing
nor a projection repeated per caption counts as work. They depend only on the epoch's captions, so
they are the same for us and the peer: `useful_gflop_per_s` = useful FLOPs per caption of the epoch
x steady captions/s, and `bf16_matmul_fraction` (`peer_bf16_matmul_fraction` for the peer) is that
over the bfloat16 matmul rate measured in the same process.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import machine  # noqa: E402  (bench/machine.py)
import numpy as np  # noqa: E402

from training.configs import load_config  # noqa: E402
from training.data.caption_loader import CaptionLoader, create_splits, get_max_caption_length  # noqa: E402
from training.data.preprocessor import CaptionPreprocessor  # noqa: E402
from training.data.tokenizer import Tokenizer  # noqa: E402
from training.utils.io import load_json, save_json  # noqa: E402

DEFAULT_CAPTIONS = REPO.parent / "shared" / "data" / "flickr8k_captions.txt"
DATA_DIR = REPO / "bench_data"
REGIONS, CHANNELS = 100, 1536  # EfficientNetB3 at 300 px: a 10x10 grid of 1536-d vectors
STORE_FORMAT = 1  # training/features/store.py FORMAT_VERSION
TARGETS = {  # the targets for a 2-core machine
    "region_epoch_seconds": 120.0,
    "pooled_epoch_seconds": 40.0,
    "matmul_fraction": 0.5,
    "greedy_images_per_s": 150.0,
    "beam3_images_per_s": 50.0,
    "memory_5x_rss_anon_gb": 3.0,
    "speedup_vs_peer": 2.0,  # steady captions/s over the plain Keras peer's (bucketed by length), same run
    "bf16_matmul_fraction": 0.3,  # useful GFLOP/s over the bfloat16 matmul rate, same process
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- W1 data


def w1_config(pooled: bool = False):
    overrides = ["train_split=0.6", "val_split=0.2", "test_split=0.2", "glove_path=null"]
    return load_config(REPO / "training" / "config.yaml", overrides + (["use_regions=false"] if pooled else []))


def load_captions(captions_file: Path, config) -> dict[str, list[str]]:
    loader = CaptionLoader(config.data.captions_format)
    return CaptionPreprocessor().process(loader.load(captions_file))


def copy_id(image_id: str, copy: int) -> str:
    return f"{image_id}#{copy}" if copy else image_id


def load_split(captions_file: Path, scale: int, config):
    captions = load_captions(captions_file, config)
    if scale > 1:  # copies of every image under new ids, each with the same captions
        captions = {copy_id(image, copy): texts for copy in range(scale) for image, texts in captions.items()}
    d = config.data
    return create_splits(captions, d.train_split, d.val_split, d.test_split, seed=d.seed)


def store_fingerprint(image_ids: list[str], scale: int) -> str:
    recipe = {
        "rng": "numpy.random.default_rng(0).standard_normal",
        "shape": [len(image_ids), REGIONS, CHANNELS],
        "dtype": "float16",
        "copies": scale,
        "ids": hashlib.sha256("\n".join(image_ids).encode()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:32]


def build_store(directory: Path, image_ids: list[str], scale: int = 1, source: Path | None = None, chunk: int = 256) -> float:
    """A feature store in training/features/store.py's layout, of random features; reused when its
    fingerprint matches. Returns the seconds spent writing it (0 when reused).

    scale > 1: `image_ids` are `scale` copies of the 1x ids in order, and the features are the 1x
    store's (`source`) repeated, as the captions are: a copy, not new random numbers, so the big
    store costs disk time only."""
    directory.mkdir(parents=True, exist_ok=True)
    index_path, features_path = directory / "features_index.json", directory / "features.npy"
    fingerprint = store_fingerprint(image_ids, scale)
    if index_path.is_file() and features_path.is_file():
        index = load_json(index_path)
        if index.get("complete") and index.get("fingerprint") == fingerprint:
            return 0.0
    log(
        f"writing the W1 feature store {directory} ({len(image_ids)} x {REGIONS} x {CHANNELS} float16, "
        f"{len(image_ids) * REGIONS * CHANNELS * 2 / 1e9:.1f} GB)"
    )
    start = time.perf_counter()
    index_path.unlink(missing_ok=True)
    partial = directory / "features.partial.npy"
    shape = (len(image_ids), REGIONS, CHANNELS)
    features = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=shape)
    base = np.load(source / "features.npy", mmap_mode="r") if scale > 1 else None
    rng = np.random.default_rng(0)
    for begin in range(0, shape[0], chunk):
        rows = min(chunk, shape[0] - begin)
        if base is None:
            features[begin : begin + rows] = rng.standard_normal((rows, REGIONS, CHANNELS), dtype=np.float32)
        else:
            row = begin
            while row < begin + rows:  # a chunk may span two copies
                first = row % len(base)
                count = min(begin + rows - row, len(base) - first)
                features[row : row + count] = base[first : first + count]
                row += count
        if (begin // chunk) % 8 == 7:  # write back as we go, so dirty pages do not pile up
            features.flush()
    features.flush()
    del features, base
    os.replace(partial, features_path)
    save_json(
        {
            "format": STORE_FORMAT,
            "fingerprint": fingerprint,
            "extractor": "random (bench W1)",
            "weights": None,
            "image_size": [300, 300],
            "grid_shape": [10, 10],
            "feature_dim": CHANNELS,
            "image_ids": image_ids,
            "bad_images": [],
            "complete": True,
        },
        index_path,
    )
    return time.perf_counter() - start


def store_dir(scale: int) -> Path:
    return DATA_DIR / f"w1_x{scale}"


def prepare_store(captions_file: Path, scale: int) -> float:
    """The store of `scale` copies of the Flickr8k images (the 1x store must exist for scale > 1)."""
    images = sorted(load_captions(captions_file, w1_config()))
    image_ids = [copy_id(image, copy) for copy in range(scale) for image in images]
    return build_store(store_dir(scale), image_ids, scale, source=store_dir(1))


# ---------------------------------------------------------------------------------------- machine


class MemorySampler:
    """Peak RssAnon of this process, sampled on a thread (the kernel keeps no peak of it)."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def status(key: str) -> int:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.status("RssAnon"))
            time.sleep(self.interval)

    def snapshot(self) -> dict:
        self.peak = max(self.peak, self.status("RssAnon"))
        return {"peak_rss_anon_gb": round(self.peak / 1e9, 3), "peak_rss_gb": round(self.status("VmHWM") / 1e9, 3)}


def matmul_gflops(dtypes) -> dict[str, list[float]]:
    """This process's matmul rates (2048 x 2048, 7 per dtype, alternated): see the module docstring."""
    from training.utils.mixed_precision import matmul_rates

    return matmul_rates(2048, 7, dtypes)


# ---------------------------------------------------------------------------------------- one row


def step_flops(rows: int, length: int, regions: int, m, vocab: int) -> float:
    """Training-step FLOPs of one batch (see the module docstring)."""
    U, L, R, C, D, F, E, V = rows, length, regions, m.feature_dim, m.hidden_dim, m.ff_dim, m.embedding_dim, vocab
    inputs = U * R * C * D + U * L * E * D
    layer = 4 * U * L * D * D + 2 * U * L * L * D + 2 * U * L * D * D + 2 * U * R * D * D + 2 * U * L * R * D + 2 * U * L * D * F
    forward = inputs + U * L * D * V + m.num_layers * layer
    return 2.0 * (3 * forward - inputs)


class StepTimes:
    """Keras callback: the end time of every training batch."""

    def __init__(self):
        import keras

        class Callback(keras.callbacks.Callback):
            def on_train_begin(cb, logs=None):
                self.begin = time.perf_counter()

            def on_train_batch_end(cb, batch, logs=None):
                self.ends.append(time.perf_counter())
                self.losses.append(float(logs["loss"]))
                if len(self.ends) % 100 == 0:
                    log(f"  step {len(self.ends)}: loss {float(logs['loss']):.3f}, {time.perf_counter() - self.begin:.0f} s")

        self.begin, self.ends, self.losses, self.callback = None, [], [], Callback()


def tap_batches(dataset, record: list):
    """The dataset unchanged; each batch's (rows, padded length, captions, real tokens) appended to `record`
    as tf.data produces it (in order, so entry i describes training batch i)."""
    import tensorflow as tf

    def note(positions, targets):
        is_token = targets > 0
        record.append((targets.shape[0], targets.shape[1], int(np.sum((positions == 0) & is_token)), int(is_token.sum())))
        return np.int32(0)

    def tap(inputs, targets):
        done = tf.numpy_function(note, [inputs[2], targets], tf.int32, stateful=True)
        with tf.control_dependencies([done]):
            return tf.nest.map_structure(tf.identity, inputs), tf.identity(targets)

    return dataset.map(tap)


def decode_rate(decoder, features: np.ndarray, warmup: int = 64) -> tuple[float, list]:
    decoder.decode(features[:warmup])  # traces the full-batch graph
    decoder.decode(features[: len(features) % decoder.batch_size or decoder.batch_size])  # and the last batch's
    start = time.perf_counter()
    captions = decoder.decode(features)
    return len(features) / (time.perf_counter() - start), captions


def fraction_key(dtype: str) -> str:
    """JSON key of useful GFLOP/s over the matmul rate of the compute dtype: bf16_matmul_fraction, ..."""
    return {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}[dtype] + "_matmul_fraction"


def useful_step_flops(caption_lengths, images: int, regions: int, m, vocab: int) -> float:
    """Training-step FLOPs of the model computing each caption alone and unpadded (see the module docstring)."""
    D, F, E, V, C, N, R = m.hidden_dim, m.ff_dim, m.embedding_dim, vocab, m.feature_dim, m.num_layers, regions
    lengths = np.asarray(caption_lengths, dtype=np.float64)
    per_token = E * D + D * V + N * (4 * D * D + 2 * D * D + 2 * R * D + 2 * D * F)
    per_image = R * C * D + N * 2 * R * D * D
    forward = per_token * lengths.sum() + N * 2 * D * np.sum(lengths**2) + per_image * images
    inputs = E * D * lengths.sum() + R * C * D * images
    return 2.0 * (3 * forward - inputs)


def useful_flops_per_caption(builder, captions: dict, regions: int, m, vocab: int) -> float:
    """The epoch's useful FLOPs over its captions: the same figure for any model that trains the epoch."""
    lengths = [len(sample.tokens) - 1 for sample in builder.samples(captions)]
    return useful_step_flops(lengths, len(captions), regions, m, vocab) / len(lengths)


def build_peer_model(m, vocab: int, length: int, regions: int):
    """The decoder a user writes from the keras.io captioning example, pre-norm, at our dims: one caption
    per row, its image's regions projected for it, keras.layers.MultiHeadAttention, mixed-precision
    policy as set (logits in the policy's dtype, loss in float32, as the Keras mixed-precision guide does)."""
    import keras
    from keras import layers

    D, H = m.hidden_dim, m.num_heads
    features = keras.Input((regions, m.feature_dim), name="image_features")
    tokens = keras.Input((None,), dtype="int32", name="tokens")  # any length up to `length`
    image = layers.Dropout(m.dropout)(layers.LayerNormalization(epsilon=1e-5)(layers.Dense(D)(features)))

    class PositionalEmbedding(layers.Layer):  # as in the keras.io example, with a projection to D
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.words = layers.Embedding(vocab, m.embedding_dim, trainable=False)
            self.projection = layers.Dense(D)
            self.positions = layers.Embedding(length, D)

        def call(self, tokens):
            return self.projection(self.words(tokens)) + self.positions(keras.ops.arange(keras.ops.shape(tokens)[-1]))

    x = layers.Dropout(m.dropout)(PositionalEmbedding()(tokens))
    for _ in range(m.num_layers):
        h = layers.LayerNormalization(epsilon=1e-5)(x)
        h = layers.MultiHeadAttention(H, D // H, dropout=m.dropout)(h, h, use_causal_mask=True)
        x = x + layers.Dropout(m.dropout)(h)
        h = layers.LayerNormalization(epsilon=1e-5)(x)
        h = layers.MultiHeadAttention(H, D // H, dropout=m.dropout)(h, image)
        x = x + layers.Dropout(m.dropout)(h)
        h = layers.LayerNormalization(epsilon=1e-5)(x)
        h = layers.Dropout(m.dropout)(layers.Dense(m.ff_dim, activation="gelu")(h))
        x = x + layers.Dropout(m.dropout)(layers.Dense(D)(h))
    logits = layers.Dense(vocab)(layers.LayerNormalization(epsilon=1e-5)(x))
    return keras.Model([features, tokens], logits, name="peer")


def peer_dataset(builder, captions: dict, length: int, seed: int, bucketed: bool, record: list | None = None):
    """((features, tokens), targets, weights): one caption per row, shuffled, batched.

    bucketed: as a user writes it from the tf.data guides, captions grouped by length
    (`bucket_by_sequence_length`, buckets 2 tokens wide) and each batch padded to its own longest
    caption. Otherwise every caption padded to `length` (W1's longest), as the keras.io example does.
    `record` gets (rows, padded length, real tokens) of each batch in order, for token efficiency."""
    import tensorflow as tf

    samples = builder.samples(captions)
    rows = np.array([builder.image_index[s.image_id] for s in samples], dtype=np.int64)
    inputs = np.zeros((len(samples), length), np.int32)
    targets = np.zeros((len(samples), length), np.int32)
    for i, sample in enumerate(samples):
        inputs[i, : len(sample.tokens) - 1] = sample.tokens[:-1]
        targets[i, : len(sample.tokens) - 1] = sample.tokens[1:]
    lengths = np.array([len(s.tokens) - 1 for s in samples], np.int64)

    def to_batch(row, x, y):
        # The store's dtype: float16 regions, float32 pooled vectors (pooled as training pools them).
        features = tf.numpy_function(builder._gather, [row], tf.as_dtype(builder.features.dtype), stateful=False)
        features = tf.cast(tf.ensure_shape(features, (None,) + builder.feature_shape), tf.float32)
        return (features, x), y, tf.cast(y > 0, tf.float32)

    def note(y):
        record.append((y.shape[0], y.shape[1], int((y > 0).sum())))
        return np.int32(0)

    def tap(row, x, y):
        with tf.control_dependencies([tf.numpy_function(note, [y], tf.int32, stateful=True)]):
            return tf.identity(row), tf.identity(x), tf.identity(y)

    dataset = tf.data.Dataset.from_tensor_slices((rows, inputs, targets, lengths)).shuffle(len(samples), seed=seed)
    if bucketed:
        dataset = dataset.map(lambda row, x, y, n: (row, x[:n], y[:n])).bucket_by_sequence_length(
            lambda row, x, y: tf.shape(x)[0],
            bucket_boundaries=list(range(4, length, 2)),
            bucket_batch_sizes=[builder.batch_size] * len(range(2, length, 2)),
        )
    else:
        dataset = dataset.map(lambda row, x, y, n: (row, x, y)).batch(builder.batch_size)
    if record is not None:
        dataset = dataset.map(tap)  # sequential, so the record is in batch order
    return dataset.map(to_batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def run_peer(args) -> dict:
    """A peer row (worker peer-ROW: bucketed by length; peer-padded-ROW: every caption padded to W1's
    longest): the plain Keras model trained with model.fit for `--peer-steps` steps."""
    import keras

    from training.data.dataset import DatasetBuilder
    from training.features import FeatureStore
    from training.utils import configure_precision, set_global_seed

    pooled, bucketed = args.worker.endswith("-pooled"), not args.worker.startswith("peer-padded-")
    config = w1_config(pooled)
    # Seeded as keras.io's example is, without TensorFlow's op determinism, which a user writing this peer does
    # not turn on: with it, the loss's fused kernel would give way to slower, deterministic ops.
    set_global_seed(config.data.seed, deterministic_ops=False)
    policy = configure_precision(config.training.use_mixed_precision) if args.precision == "config" else args.precision
    keras.mixed_precision.set_global_policy(policy)
    split = load_split(Path(args.captions), 1, config)
    tokenizer = Tokenizer(min_word_count=config.data.word_count_threshold).fit(
        caption for captions in split.train.values() for caption in captions
    )
    max_length = get_max_caption_length(split.train)
    store = FeatureStore.open(store_dir(1))
    builder = DatasetBuilder(
        store.features, store.index, tokenizer, max_length - 1, config.training.batch_size, config.data.seed, pooled=pooled
    )
    regions = 1 if pooled else REGIONS
    model = build_peer_model(config.model, tokenizer.vocab_size, max_length - 1, regions)
    model.compile(
        optimizer=keras.optimizers.Adam(config.training.learning_rate, clipnorm=config.training.clipnorm),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=["sparse_categorical_accuracy"],
    )
    compute_dtype = keras.mixed_precision.global_policy().compute_dtype
    rates = matmul_gflops(sorted({"float32", compute_dtype}))
    times = StepTimes()
    record: list = []
    train = peer_dataset(builder, split.train, max_length - 1, config.data.seed, bucketed, record).repeat()
    log(f"{args.worker}: training {args.peer_steps} steps (policy {policy})")
    model.fit(train, epochs=1, steps_per_epoch=args.peer_steps, callbacks=[times.callback], verbose=0)
    for name, dtype_rates in matmul_gflops(list(rates)).items():
        rates[name] += dtype_rates
    warmup = 10
    steady_seconds = times.ends[-1] - times.ends[warmup - 1]
    steady = record[warmup : len(times.ends)]
    captions_per_s = sum(rows for rows, _, _ in steady) / steady_seconds
    useful = useful_flops_per_caption(builder, split.train, regions, config.model, tokenizer.vocab_size)
    matmul = {name: round(statistics.median(r), 1) for name, r in rates.items()}
    result = {
        "padding": "per batch, bucketed by length" if bucketed else f"every caption to {max_length - 1} tokens",
        "policy": policy,
        "steps": len(times.ends),
        "first_batch_seconds": round(times.ends[0] - times.begin, 2),
        "token_efficiency": round(sum(t for _, _, t in steady) / sum(r * n for r, n, _ in steady), 3),
        "steady_captions_per_s": round(captions_per_s, 1),
        "steady_step_ms": round(1000 * steady_seconds / (len(times.ends) - warmup), 1),
        "useful_gflop_per_s": round(useful * captions_per_s / 1e9, 1),
        "matmul_gflop_per_s": matmul,
        "loss_first_and_last_batch": [round(times.losses[0], 3), round(times.losses[-1], 3)],
    }
    result[fraction_key(compute_dtype)] = round(useful * captions_per_s / 1e9 / matmul[compute_dtype], 3)
    return result


def run_row(args) -> dict:
    """One row of figures; runs in its own process."""
    sampler = MemorySampler()
    import keras

    from training.data.dataset import DatasetBuilder
    from training.evaluation.inference import BeamSearchDecoder, GreedyDecoder
    from training.features import FeatureStore
    from training.models import build_caption_model
    from training.models.optimization import compile_caption_model
    from training.utils import configure_precision, set_global_seed

    pooled = args.worker == "pooled"
    config = w1_config(pooled)
    set_global_seed(config.data.seed)
    policy = configure_precision(config.training.use_mixed_precision) if args.precision == "config" else args.precision
    keras.mixed_precision.set_global_policy(policy)
    split = load_split(Path(args.captions), args.scale, config)
    tokenizer = Tokenizer(min_word_count=config.data.word_count_threshold).fit(
        caption for captions in split.train.values() for caption in captions
    )
    max_length = get_max_caption_length(split.train)
    store = FeatureStore.open(store_dir(args.scale))
    builder = DatasetBuilder(
        store.features, store.index, tokenizer, max_length - 1, config.training.batch_size, config.data.seed, pooled=pooled
    )
    embedding = np.random.default_rng(0).normal(0.0, 0.4, (tokenizer.vocab_size, config.model.embedding_dim)).astype("float32")
    model = build_caption_model(config.model, tokenizer.vocab_size, max_length - 1, embedding)
    compile_caption_model(model, config)

    compute_dtype = keras.mixed_precision.global_policy().compute_dtype
    rates = matmul_gflops(sorted({"float32", compute_dtype}))

    record: list = []
    times = StepTimes()
    train = tap_batches(builder.build(split.train), record)
    steps = args.steps if args.worker == "memory" else None
    log(
        f"{args.worker}: training {f'{steps} steps' if steps else f'{args.epochs} epoch(s)'} "
        f"({sum(map(len, split.train.values()))} captions per epoch, policy {policy})"
    )
    start = time.perf_counter()
    history = model.fit(
        train.repeat() if steps else train,
        epochs=1 if steps else args.epochs,
        steps_per_epoch=steps,
        callbacks=[times.callback],
        verbose=0,
    )
    fit_seconds = time.perf_counter() - start
    training_memory = sampler.snapshot()

    for name, dtype_rates in matmul_gflops(list(rates)).items():
        rates[name] += dtype_rates
    batches = len(times.ends)
    per_epoch = len(record) if steps else len(record) // args.epochs
    record = record[:batches]
    warmup = max(10, batches // 20)
    steady_seconds = times.ends[-1] - times.ends[warmup - 1]
    steady = record[warmup:]
    flops = sum(
        step_flops(rows, length, 1 if pooled else REGIONS, config.model, tokenizer.vocab_size) for rows, length, _, _ in steady
    )
    matmul = {name: round(statistics.median(r), 1) for name, r in rates.items()}
    gflops = flops / steady_seconds / 1e9
    captions_per_s = sum(c for _, _, c, _ in steady) / steady_seconds
    useful_gflops = (
        useful_flops_per_caption(builder, split.train, 1 if pooled else REGIONS, config.model, tokenizer.vocab_size)
        * captions_per_s
        / 1e9
    )
    result = {
        "features": "pooled 1x1536" if pooled else f"regions {REGIONS}x{CHANNELS}",
        "images_in_store": len(store),
        "policy": policy,
        "captions_per_epoch": sum(len(texts) for texts in split.train.values()),
        "batches_per_epoch": None if steps else per_epoch,
        "batches_trained": batches,
        "first_batch_seconds": round(times.ends[0] - times.begin, 2),
        "slowest_later_batches_seconds": sorted((round(b - a, 2) for a, b in zip(times.ends, times.ends[1:])), reverse=True)[:3],
        "steady_captions_per_s": round(captions_per_s, 1),
        "steady_step_ms": round(1000 * steady_seconds / len(steady), 1),
        "token_efficiency": round(sum(t for _, _, _, t in steady) / sum(r * n for r, n, _, _ in steady), 3),
        "train_gflop_per_s": round(gflops, 1),
        "useful_gflop_per_s": round(useful_gflops, 1),
        "matmul_gflop_per_s": matmul,
        "matmul_fraction_float32": round(gflops / matmul["float32"], 3),
        # Keras' running mean over the epoch, after the first batch and at the end
        "loss_first_batch_and_epoch_mean": [round(times.losses[0], 3), round(history.history["loss"][-1], 3)],
        "training_memory": training_memory,
    }
    if compute_dtype != "float32":
        result[f"matmul_fraction_{compute_dtype}"] = round(gflops / matmul[compute_dtype], 3)
    result[fraction_key(compute_dtype)] = round(useful_gflops / matmul[compute_dtype], 3)
    if steps:
        result["fit_seconds"] = round(fit_seconds, 1)
    else:
        result["epoch_seconds"] = round(times.ends[per_epoch - 1] - times.begin, 1)

    if args.decode_images and not steps:
        test_ids = list(split.test)[: args.decode_images]
        features = builder.image_features(test_ids)
        greedy, captions = decode_rate(GreedyDecoder(model, tokenizer), features)
        beam, _ = decode_rate(BeamSearchDecoder(model, tokenizer, beam_size=3), features)
        result.update(
            {
                "decode_images": len(test_ids),
                "greedy_images_per_s": round(greedy, 1),
                "beam3_images_per_s": round(beam, 1),
                "greedy_mean_words": round(float(np.mean([len(c.tokens) for c in captions])), 2),
                "greedy_example": captions[0].text,
            }
        )
        # What caption metrics during training cost per epoch: val_bleu4 / val_cider on 500 validation images.
        from training.callbacks.caption_metrics import CaptionValidation

        validation = CaptionValidation(tokenizer, builder, split.val, 500)
        timings = []
        for _ in range(2):  # the first includes tracing the greedy search for these batch sizes
            start = time.perf_counter()
            validation.score(model)
            timings.append(time.perf_counter() - start)
        result["val_caption_metrics_seconds"] = [round(t, 2) for t in timings]
        # Training reuses one traced search every epoch: the second call is what each later epoch pays.
        result["val_caption_metrics_fraction_of_epoch"] = round(timings[1] / result["epoch_seconds"], 3)
        result["val_caption_metrics_first_fraction_of_epoch"] = round(timings[0] / result["epoch_seconds"], 3)
    result["memory"] = sampler.snapshot()
    return result


# ---------------------------------------------------------------------------------------- driver


def run_worker(args, worker: str, scale: int = 1) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        worker,
        "--scale",
        str(scale),
        "--epochs",
        str(args.epochs),
        "--steps",
        str(args.steps),
        "--decode-images",
        str(args.decode_images),
        "--captions",
        str(args.captions),
        "--precision",
        args.precision,
        "--peer-steps",
        str(args.peer_steps),
        "--data-dir",
        str(DATA_DIR),
    ]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f"bench/train.py: the {worker} row failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def targets(rows: dict, memory: dict | None) -> dict:
    met = {}
    region, pooled = rows.get("region"), rows.get("pooled")
    if region and "epoch_seconds" in region:
        met["region_epoch_seconds"] = [
            region["epoch_seconds"],
            TARGETS["region_epoch_seconds"],
            region["epoch_seconds"] <= TARGETS["region_epoch_seconds"],
        ]
    if pooled and "epoch_seconds" in pooled:
        met["pooled_epoch_seconds"] = [
            pooled["epoch_seconds"],
            TARGETS["pooled_epoch_seconds"],
            pooled["epoch_seconds"] <= TARGETS["pooled_epoch_seconds"],
        ]
    for name, row in rows.items():
        fraction = row["matmul_fraction_float32"]
        met[f"{name}_matmul_fraction_float32"] = [fraction, TARGETS["matmul_fraction"], fraction >= TARGETS["matmul_fraction"]]
    for name, row in rows.items():
        if "speedup_vs_peer" in row:
            met[f"{name}_speedup_vs_peer"] = [
                row["speedup_vs_peer"],
                TARGETS["speedup_vs_peer"],
                row["speedup_vs_peer"] >= TARGETS["speedup_vs_peer"],
            ]
        if "bf16_matmul_fraction" in row:
            met[f"{name}_bf16_matmul_fraction"] = [
                row["bf16_matmul_fraction"],
                TARGETS["bf16_matmul_fraction"],
                row["bf16_matmul_fraction"] >= TARGETS["bf16_matmul_fraction"],
            ]
    if region and "greedy_images_per_s" in region:
        for key in ("greedy_images_per_s", "beam3_images_per_s"):
            met[key] = [region[key], TARGETS[key], region[key] >= TARGETS[key]]
    if region and "val_caption_metrics_fraction_of_epoch" in region:
        fraction = region["val_caption_metrics_fraction_of_epoch"]
        met["val_caption_metrics_fraction_of_epoch"] = [fraction, 0.10, fraction <= 0.10]
    if memory:
        peak = memory["training_memory"]["peak_rss_anon_gb"]
        met["memory_5x_rss_anon_gb"] = [peak, TARGETS["memory_5x_rss_anon_gb"], peak < TARGETS["memory_5x_rss_anon_gb"]]
    return met


def main() -> None:
    global DATA_DIR
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="region,pooled", help="comma-separated: region, pooled")
    parser.add_argument("--epochs", type=int, default=1, help="full training epochs per row")
    parser.add_argument("--scale", type=int, default=5, help="images multiple of the memory test's store (0: no memory test)")
    parser.add_argument("--steps", type=int, default=300, help="training steps of the memory test")
    parser.add_argument("--decode-images", type=int, default=1000, help="test images to caption per row (0: no decoding)")
    parser.add_argument("--captions", default=str(DEFAULT_CAPTIONS))
    parser.add_argument(
        "--precision",
        default="config",
        help="'config' (configure_precision with the config's use_mixed_precision) or a Keras policy name",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the big-store memory test")
    parser.add_argument("--peer-steps", type=int, default=150, help="training steps of the plain Keras peer per row (0: no peer)")
    parser.add_argument(
        "--data-dir", type=Path, default=DATA_DIR, help=f"where the feature stores are written and reused (default {DATA_DIR})"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    DATA_DIR = args.data_dir.resolve()

    if args.worker:
        if args.worker == "memory":
            args.decode_images = 0
        print(json.dumps(run_peer(args) if args.worker.startswith("peer-") else run_row(args)))
        return

    if not Path(args.captions).is_file():
        raise SystemExit(f"bench/train.py: captions file not found: {args.captions} (pass --captions PATH)")
    started = time.perf_counter()
    report = {"workload": "W1", "machine": machine.describe(), "rows": {}}
    report["store_write_seconds"] = round(prepare_store(Path(args.captions), 1), 1)
    for row in [r.strip() for r in args.rows.split(",") if r.strip()]:
        if row not in ("region", "pooled"):
            raise SystemExit(f"bench/train.py: unknown row {row!r}; choose from region, pooled")
        report["rows"][row] = ours = run_worker(args, row)
        log(f"{row}: {json.dumps(ours)}")
        if args.peer_steps:  # right after ours, so both see the machine of the same minutes
            peer = run_worker(args, f"peer-{row}")
            log(f"peer-{row}: {json.dumps(peer)}")
            ours["peer"] = peer
            ours["peer_captions_per_s"] = peer["steady_captions_per_s"]
            ours["speedup_vs_peer"] = round(ours["steady_captions_per_s"] / peer["steady_captions_per_s"], 2)
            for key in [k for k in peer if k.endswith("_matmul_fraction")]:
                ours[f"peer_{key}"] = peer[key]
            # The peer as earlier runs measured it (every caption padded to W1's longest), for history.
            padded = run_worker(args, f"peer-padded-{row}")
            log(f"peer-padded-{row}: {json.dumps(padded)}")
            ours["padded_peer"] = padded
            ours["speedup_vs_padded_peer"] = round(ours["steady_captions_per_s"] / padded["steady_captions_per_s"], 2)
    memory = None
    if args.scale > 1 and not args.no_memory:
        try:
            write_seconds = prepare_store(Path(args.captions), args.scale)
            memory = run_worker(args, "memory", args.scale)
            memory["store_write_seconds"] = round(write_seconds, 1)
            memory["store_gb"] = round((store_dir(args.scale) / "features.npy").stat().st_size / 1e9, 2)
            memory["scale"] = args.scale
            log(f"memory: {json.dumps(memory)}")
        finally:
            shutil.rmtree(store_dir(args.scale), ignore_errors=True)
        report["memory_test"] = memory
    report["targets"] = targets(report["rows"], memory)
    report["bench_seconds"] = round(time.perf_counter() - started, 1)
    report["machine"] = machine.finish(report["machine"])
    print(json.dumps(report))


if __name__ == "__main__":
    main()
