"""Evaluating a split: caption its images with the run's Captioner, score them, write the results beside the run's."""

from __future__ import annotations

from pathlib import Path

from training.configs import Config, ConfigError
from training.evaluation.metrics import strip_wrappers
from training.run.artifacts import predictions_name, write_per_image_scores, write_predictions

GALLERY_SIZE = 12  # images whose attention maps are kept for the report


def features_captioner(model, tokenizer, config: Config, beam_size: int | None = None):
    """The run's Captioner for precomputed features: its CNN is built without loading weights, as it never runs."""
    from training.captioner import Captioner

    return Captioner.from_run(model, tokenizer, config, beam_size=beam_size, extractor_weights=None)


def evaluate_split(
    model,
    tokenizer,
    builder,
    captions: dict,
    config: Config,
    artifacts_dir,
    tracker=None,
    beam_size: int | None = None,
    split_name: str = "test",
    show: int = 5,
    beside_run: bool = False,
) -> dict:
    """Caption every image of `captions` (up to eval_max_images), score, and write the results.

    The run's own evaluation writes predictions_<split>.json; `beside_run` (a later evaluation)
    writes predictions_<split>_beam<k>.json instead, so the run's results are never replaced.
    Per-image scores go to logs/bleu_scores.csv under (split, beam).
    """
    from training.evaluation.metrics import CaptionEvaluator

    artifacts_dir = Path(artifacts_dir)
    beam_size = beam_size or config.training.beam_size
    image_ids = list(captions)[: config.training.eval_max_images]
    if not image_ids:
        raise ConfigError(f"the {split_name} split has no images to evaluate: check the split ratios")
    results = features_captioner(model, tokenizer, config, beam_size).caption(builder.image_features(image_ids), attention=True)
    predictions = {image_id: result.text for image_id, result in zip(image_ids, results)}
    references = {image_id: [strip_wrappers(c) for c in captions[image_id]] for image_id in image_ids}

    evaluator = CaptionEvaluator()
    scores = evaluator.evaluate(predictions, references)
    if config.data.scenes_file:  # right about the image: colour+shape mentions and counts against the scenes
        from training.evaluation.objects import object_scores

        scores.update(object_scores(predictions, config.data.scenes_file))
    write_per_image_scores(artifacts_dir, split_name, beam_size, evaluator.per_image)
    records = [
        _record(image_id, result, references[image_id], position < GALLERY_SIZE)
        for position, (image_id, result) in enumerate(zip(image_ids, results))
    ]
    name = predictions_name(split_name, beam_size if beside_run else None)
    write_predictions(artifacts_dir, name, split_name, beam_size, scores, records)
    if tracker is not None:
        tracker.log_bleu_scores(**{f"bleu{n}": scores[f"bleu{n}"] for n in range(1, 5)})
        tracker.log_scores(**{k: v for k, v in scores.items() if not k.startswith("bleu")})
        tracker.sections["evaluation"] = {
            "split": split_name,
            "beam_size": beam_size,
            "images": len(image_ids),
            "predictions": name,
        }
    for record in records[:show]:
        print(f"\n{record['image_id']}\n  predicted: {record['prediction']}")
        for reference in record["references"]:
            print(f"  reference: {reference}")
    return scores


def _record(image_id: str, result, references: list[str], with_attention: bool) -> dict:
    record = {"image_id": image_id, "prediction": result.text, "score": float(result.score), "references": references}
    if with_attention and result.attention is not None:
        record["attention"] = [[round(float(a), 4) for a in row] for row in result.attention]
    return record
