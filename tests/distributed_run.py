"""Trains a tiny caption model for one short epoch under a chosen strategy and prints its losses as JSON.

Run by tests/test_distributed.py as a real process per device setup or worker:
    python tests/distributed_run.py single|mirrored|worker OUT_DIR
A 'worker' reads TF_CONFIG like any multi-worker job. Every mode builds the same data, and all
start from the initial weights the 'single' run saved, so their first-step losses must agree.
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

mode, out_dir = sys.argv[1], Path(sys.argv[2])
if mode == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

from training.callbacks.caption_metrics import CaptionValidation  # noqa: E402
from training.configs import config_from_dict  # noqa: E402
from training.data.dataset import DatasetBuilder  # noqa: E402
from training.data.tokenizer import Tokenizer  # noqa: E402
from training.trainers import DistributedTrainer, Trainer  # noqa: E402
from training.utils import set_global_seed  # noqa: E402

config = config_from_dict(
    {
        "feature_dim": 8,
        "embedding_dim": 8,
        "hidden_dim": 16,
        "num_heads": 2,
        "num_layers": 1,
        "ff_dim": 32,
        "dropout": 0.0,
        "batch_size": 8,
        "epochs": 1,
        "learning_rate": 0.01,
        "glove_path": None,
        "distribution": {"single": "none", "mirrored": "mirrored", "worker": "multi_worker"}[mode],
        "word_count_threshold": 1,
        "monitor": "val_cider",
        "mode": "max",
    }
)
set_global_seed(0)
trainer = (Trainer if mode == "single" else DistributedTrainer)(config, out_dir / f"artifacts_{mode}")

rng = np.random.default_rng(0)
words = [f"w{chr(97 + i)}" for i in range(10)]
# Every caption has the same length, so each replica's masked mean equals the global one.
captions = {f"img{i}": ["startseq " + " ".join(rng.choice(words, 4)) + " endseq" for _ in range(2)] for i in range(16)}
features = rng.normal(size=(16, 4, 8)).astype(np.float16)
index = {f"img{i}": i for i in range(16)}
tokenizer = Tokenizer(min_word_count=1).fit(c for cs in captions.values() for c in cs)
builder = DatasetBuilder(features, index, tokenizer, max_length=5, batch_size=8, seed=0)

# val_cider of greedy captions after the epoch: the monitored value, which every worker must agree on.
trainer.caption_validation = CaptionValidation(tokenizer, builder, captions, max_images=16)
model = trainer.build_model(tokenizer.vocab_size, 5)
weights = out_dir / "initial.weights.h5"
if mode == "single":
    model.save_weights(weights)
else:
    model.load_weights(weights)


class BatchLosses(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))


recorder = BatchLosses()
# Shuffle off: the test compares the same first batch everywhere.
train = builder.build(captions, training=False)
history = trainer.train(model, train, builder.build(captions, training=False), callbacks=[recorder], verbose=0)
worker_dir = getattr(trainer, "_worker_dir", None)  # a non-chief worker's temporary folder
print(
    json.dumps(
        {
            "mode": mode,
            "replicas": trainer.strategy.num_replicas_in_sync,
            "is_chief": trainer.is_chief,
            "batch_losses": recorder.losses,
            "val_cider": history.history["val_cider"],
            "worker_dir": worker_dir and str(worker_dir),
        }
    )
)
