"""Captioning new images with a trained run: image files -> features -> beam search -> captions.

    python -m training.caption photo.jpg [more.jpg ...] --artifacts artifacts/demo [--beam 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from training.configs import ConfigError


def caption_images(paths: list[str], artifacts_dir, beam_size: int | None = None) -> tuple[list[dict], list[dict]]:
    """Caption each readable image; returns (captions, bad images with reasons)."""
    import numpy as np

    from training.evaluate import load_trained, make_decoder
    from training.features import get_feature_extractor

    config, model, tokenizer = load_trained(artifacts_dir)
    m = config.model
    # The run's own extractor and image size: features must match what the model was trained on.
    extractor = get_feature_extractor(m.feature_extractor, image_size=m.image_size, weights=m.extractor_weights)
    resolved = [str(Path(p).resolve()) for p in paths]
    features = extractor.extract_features(resolved, images_path="/", verbose=0)
    good = [p for p in resolved if p in features]
    if not good:
        return [], extractor.bad_images
    batch = np.stack([features[p] for p in good]).astype(np.float32)
    if not m.use_regions:
        batch = batch.mean(axis=1, keepdims=True)
    results = make_decoder(model, tokenizer, beam_size or config.training.beam_size).decode(batch)
    captions = []
    for path, result in zip(good, results):
        record = {"image": path, "caption": result.text, "score": float(result.score),
                  "words": [tokenizer.index_word[t] for t in result.tokens]}
        if result.attention is not None and m.use_regions:
            record["grid_shape"] = list(extractor.grid_shape)
            record["attention"] = np.round(np.asarray(result.attention, dtype=float), 4).tolist()
        captions.append(record)
    return captions, extractor.bad_images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.caption", description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", help="image files (JPEG or PNG)")
    parser.add_argument("--artifacts", required=True, type=Path, help="artifacts_dir of a trained run")
    parser.add_argument("--beam", type=int, default=None, help="beam size (1 = greedy); default: the run's beam_size")
    parser.add_argument("--json", action="store_true", help="print JSON with scores and per-word attention")
    args = parser.parse_args(argv)
    try:
        captions, bad = caption_images(args.images, args.artifacts, args.beam)
    except (ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for entry in bad:
        print(f"error: {entry['path']}: {entry['reason']}", file=sys.stderr)
    if args.json:
        print(json.dumps(captions, indent=2))
    else:
        for record in captions:
            print(f"{record['image']}\t{record['caption']}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
