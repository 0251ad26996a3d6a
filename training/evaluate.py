"""Evaluation: caption a split with the trained model and score it (BLEU, METEOR, ROUGE-L, CIDEr).

    python -m training.evaluate --artifacts artifacts/demo --split test [--beam 3]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from training.configs import Config, ConfigError
from training.evaluation.metrics import strip_wrappers
from training.utils.io import load_json, save_json

log = logging.getLogger("training.evaluation")

GALLERY_SIZE = 12  # images whose attention maps are kept for the report


def features_captioner(model, tokenizer, config: Config, beam_size: int | None = None):
    """The run's Captioner for precomputed features: its CNN is built without loading weights, as it never runs."""
    from training.captioner import Captioner

    return Captioner.from_run(model, tokenizer, config, beam_size=beam_size, extractor_weights=None)


def evaluate_split(model, tokenizer, builder, captions: dict, config: Config, artifacts_dir, tracker=None,
                   beam_size: int | None = None, split_name: str = "test", show: int = 5) -> dict:
    """Caption every image of `captions` (up to eval_max_images), score, and write the results."""
    from training.evaluation import CaptionEvaluator

    artifacts_dir = Path(artifacts_dir)
    beam_size = beam_size or config.training.beam_size
    image_ids = list(captions)[: config.training.eval_max_images]
    if not image_ids:
        raise ValueError(f"the {split_name} split has no images to evaluate: check the split ratios")
    results = features_captioner(model, tokenizer, config, beam_size).caption(builder.image_batches(image_ids), attention=True)
    predictions = {image_id: result.text for image_id, result in zip(image_ids, results)}
    references = {image_id: [strip_wrappers(c) for c in captions[image_id]] for image_id in image_ids}

    evaluator = CaptionEvaluator()
    scores = evaluator.evaluate(predictions, references)
    if config.data.scenes_file:  # right about the image: colour+shape mentions and counts against the scenes
        from training.evaluation.objects import object_scores

        scores.update(object_scores(predictions, config.data.scenes_file))
    evaluator.write_per_image_csv(artifacts_dir / "logs" / "bleu_scores.csv")
    records = []
    for position, (image_id, result) in enumerate(zip(image_ids, results)):
        record = {"image_id": image_id, "prediction": result.text, "score": float(result.score), "references": references[image_id]}
        if position < GALLERY_SIZE and result.attention is not None:
            record["attention"] = [[round(float(a), 4) for a in row] for row in result.attention]
        records.append(record)
    save_json({"split": split_name, "beam_size": beam_size, "scores": scores, "captions": records},
              artifacts_dir / f"predictions_{split_name}.json")
    if tracker is not None:
        tracker.log_bleu_scores(**{f"bleu{n}": scores[f"bleu{n}"] for n in range(1, 5)})
        tracker.log_scores(**{k: v for k, v in scores.items() if not k.startswith("bleu")})
    for record in records[:show]:
        print(f"\n{record['image_id']}\n  predicted: {record['prediction']}")
        for reference in record["references"]:
            print(f"  reference: {reference}")
    return scores


def load_trained(artifacts_dir: Path):
    """Config, model and tokenizer of a finished run."""
    import keras

    import training.models  # noqa: F401 - registers the model's classes for load_model
    from training.configs import config_from_dict
    from training.data.tokenizer import Tokenizer
    from training.train import FINAL_MODEL

    artifacts_dir = Path(artifacts_dir)
    snapshot = artifacts_dir / "config_snapshot.json"
    if not snapshot.is_file():
        raise ConfigError(f"{artifacts_dir} holds no config_snapshot.json: is it the artifacts_dir of a finished run?")
    raw = load_json(snapshot)
    raw["data"]["artifacts_dir"] = str(artifacts_dir)
    config = config_from_dict(raw, source=str(snapshot))
    model_path = artifacts_dir / FINAL_MODEL
    if not model_path.is_file():
        raise ConfigError(f"{model_path} not found: the run in {artifacts_dir} has not finished training")
    return config, keras.saving.load_model(model_path), Tokenizer.load(artifacts_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", required=True, type=Path, help="artifacts_dir of a trained run")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--beam", type=int, default=None, help="beam size (1 = greedy); default: the run's beam_size")
    args = parser.parse_args(argv)
    from training.data.caption_loader import CaptionLoader
    from training.data.dataset import DatasetBuilder
    from training.data.preprocessor import CaptionPreprocessor
    from training.utils import setup_logging

    setup_logging()
    from training.features import FeatureStore

    try:
        config, model, tokenizer = load_trained(args.artifacts)
        store, splits = FeatureStore.open(args.artifacts), load_json(args.artifacts / "splits.json")
    except (ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    loader = CaptionLoader(config.data.captions_format)
    captions = CaptionPreprocessor().process(loader.load(config.data.captions_file))
    wanted = [i for i in splits[args.split] if i in store.index]
    builder = DatasetBuilder(store.features, store.index, tokenizer, model.max_length, pooled=not config.model.use_regions)
    scores = evaluate_split(model, tokenizer, builder, {i: captions[i] for i in wanted}, config, args.artifacts,
                            beam_size=args.beam, split_name=args.split)
    print()
    for name, value in scores.items():
        print(f"{name:>8}: {value:.4f}" if value is not None else f"{name:>8}: n/a (nothing to count)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
