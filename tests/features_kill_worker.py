"""Helper for test_features: a feature extraction that stalls after a few batches, to be SIGKILLed.

    python tests/features_kill_worker.py STORE_DIR IMAGES_DIR IMAGE_ID... --stall-after N

The extractor is the real PatchGrid (same name, so the same store fingerprint) with a gate
in its preprocessing that lets N batches through and then blocks forever.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tensorflow as tf  # noqa: E402

from training.features import FeatureStore  # noqa: E402
from training.features.patches import PatchGridExtractor  # noqa: E402


class StallingPatchGrid(PatchGridExtractor):
    def __init__(self, stall_after: int, **kwargs):
        super().__init__(**kwargs)
        self.stall_after, self.batches_seen = stall_after, 0

    def _gate(self, images):
        self.batches_seen += 1
        if self.batches_seen > self.stall_after:
            time.sleep(3600)  # the test kills us here
        return images

    def preprocess(self, images):
        images = tf.numpy_function(self._gate, [tf.cast(images, tf.float32)], tf.float32, stateful=True)
        return super().preprocess(tf.ensure_shape(images, (None, *self.image_size, 3)))


parser = argparse.ArgumentParser()
parser.add_argument("store_dir")
parser.add_argument("images_dir")
parser.add_argument("image_ids", nargs="+")
parser.add_argument("--stall-after", type=int, required=True)
parser.add_argument("--batch-size", type=int, default=4)
parser.add_argument("--chunk-size", type=int, default=4)
args = parser.parse_args()
extractor = StallingPatchGrid(args.stall_after, batch_size=args.batch_size)
FeatureStore.build(args.store_dir, extractor, args.image_ids, args.images_dir, chunk_size=args.chunk_size, verbose=0)
print("finished without stalling", flush=True)
