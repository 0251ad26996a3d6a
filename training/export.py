"""Export a finished run for serving: one .keras captioner file and a TensorFlow SavedModel.

    python -m training.export --artifacts artifacts/demo --out exported/demo

writes OUT/captioner.keras (`keras.saving.load_model` after `from training import Captioner`) and
OUT/saved_model/, whose `serving_default` signature maps `images` (tf.string [None], encoded JPEG or
PNG bytes) to `captions` (tf.string [None]) and `scores` (float32 [None], the sum of log-probabilities),
decoded with the run's beam_size. Decoding, resizing, the CNN, beam search and id-to-word all run in
the graph, so TensorFlow Serving (or `tf.saved_model.load`) needs nothing of this package.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from training import cli
from training.errors import UserInputError

CAPTIONER_FILE = "captioner.keras"
SAVED_MODEL_DIR = "saved_model"


def export(artifacts_dir, out_dir, max_batch: int | None = None) -> Path:
    """Write OUT/captioner.keras and OUT/saved_model/; refuses to replace an existing export."""
    import keras
    import tensorflow as tf

    from training.captioner import BATCH_SIZES, Captioner
    from training.utils.io import atomic_path

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserInputError(f"--out {out_dir} is a file: pass a folder to write the export into")
    existing = [name for name in (CAPTIONER_FILE, SAVED_MODEL_DIR) if (out_dir / name).exists()]
    if existing:
        raise UserInputError(
            f"{out_dir} already holds {', '.join(existing)}: choose another --out, "
            "or delete that export yourself if you mean to replace it"
        )
    captioner = Captioner.from_artifacts(artifacts_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / CAPTIONER_FILE) as tmp:
        captioner.save(tmp)

    archive = keras.export.ExportArchive()
    archive.track(captioner)
    archive.add_endpoint(
        "serving_default",
        captioner.serving_function(max_batch or BATCH_SIZES[-1]),
        input_signature=[tf.TensorSpec([None], tf.string, name="images")],
    )
    partial = out_dir / f".{SAVED_MODEL_DIR}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    archive.write_out(str(partial), verbose=False)
    partial.rename(out_dir / SAVED_MODEL_DIR)  # a SavedModel is a folder: written aside, then renamed
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("training.export", __doc__)
    parser.add_argument("--artifacts", required=True, type=Path, help="artifacts_dir of a trained run")
    parser.add_argument("--out", required=True, type=Path, help="folder to write captioner.keras and saved_model/ into")
    args = parser.parse_args(argv)
    cli.start(args.log_level)
    return cli.run(lambda: _export(args))


def _export(args) -> int:
    out = export(args.artifacts, args.out)
    print(
        f"wrote {out / CAPTIONER_FILE} and {out / SAVED_MODEL_DIR}/ "
        f"(saved_model_cli show --dir {out / SAVED_MODEL_DIR} --all shows its signature)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
