"""Captioning new images with a trained run, through its Captioner: image files -> captions.

python -m training.caption photo.jpg [more.jpg ...] --artifacts artifacts/demo [--beam 3] [--json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from training import cli
from training.data.image_files import DEFAULT_MAX_PIXELS, oversized


def caption_images(
    paths: list[str], artifacts_dir, beam_size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[list[dict], list[dict]]:
    """Caption each readable image of at most `max_pixels` pixels; returns (captions, bad images with reasons)."""
    import numpy as np

    from training.captioner import Captioner
    from training.features.images import find_bad_images

    resolved = [str(Path(p).resolve()) for p in paths]
    too_large = {path: reason for path in resolved if Path(path).is_file() and (reason := oversized(path, max_pixels))}
    bad = [{"image": path, "path": path, "reason": reason} for path, reason in too_large.items()]  # never decoded
    bad += find_bad_images([p for p in resolved if p not in too_large], "/", verbose=0)
    unreadable = {entry["image"] for entry in bad}
    good = [p for p in resolved if p not in unreadable]
    if not good:
        return [], bad
    captioner = Captioner.from_artifacts(artifacts_dir, beam_size=beam_size)
    words = captioner.tokenizer.index_word
    captions = []
    for path, result in zip(good, captioner.caption(good, attention=True)):
        record = {"image": path, "caption": result.text, "score": float(result.score), "words": [words[t] for t in result.tokens]}
        if result.attention is not None and captioner.use_regions:
            record["grid_shape"] = list(captioner.extractor.grid_shape)
            record["attention"] = np.round(np.asarray(result.attention, dtype=float), 4).tolist()
        captions.append(record)
    return captions, bad


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("training.caption", __doc__)
    parser.add_argument("images", nargs="+", help="image files (JPEG or PNG)")
    parser.add_argument("--artifacts", required=True, type=Path, help="artifacts_dir of a trained run")
    parser.add_argument(
        "--beam",
        type=cli.int_range(1, cli.MAX_BEAM),
        default=None,
        help=f"beam size, 1 (greedy) to {cli.MAX_BEAM}; default: the run's beam_size",
    )
    parser.add_argument("--json", action="store_true", help="print JSON with scores and per-word attention")
    parser.add_argument(
        "--max-pixels",
        type=cli.int_range(1),
        default=DEFAULT_MAX_PIXELS,
        help="refuse larger images (width x height) before decoding them (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    cli.start(args.log_level)
    return cli.run(lambda: _caption(args))


def _caption(args) -> int:
    captions, bad = caption_images(args.images, args.artifacts, args.beam, args.max_pixels)
    for entry in bad:
        print(f"error: {entry['path']}: {entry['reason']}", file=sys.stderr)
    if args.json:
        print(json.dumps(captions, indent=2))
    else:
        for record in captions:
            print(f"{record['image']}\t{record['caption']}")
    return 2 if bad else 0  # an unreadable image is bad input, as a bad path is (the others are captioned)


if __name__ == "__main__":
    sys.exit(main())
