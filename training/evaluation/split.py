"""Evaluating a split of a run: the evaluator's captions and scores, then what is written beside the run's.

The writers are functions of the `Evaluation`: the predictions file, the per-image rows of
logs/bleu_scores.csv, the run's tracker, a few examples and the score table on the console.
"""

from __future__ import annotations

import logging
from pathlib import Path

from training.configs import Config, ConfigError
from training.evaluation.diversity import collapse_warning
from training.evaluation.evaluator import Evaluation, Evaluator, load_grounding, split_images
from training.run.artifacts import predictions_name, write_per_image_scores, write_predictions

log = logging.getLogger(__name__)

GALLERY_SIZE = 12  # images whose attention maps are kept for the report


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
    grounding=None,
) -> dict:
    """Caption every image of `captions` (up to eval_max_images), score, and write the results; warn when the
    captions collapse (distinct share under collapse_threshold).

    The run's own evaluation writes predictions_<split>.json; `beside_run` (a later evaluation)
    writes predictions_<split>_beam<k>.json instead, so the run's results are never replaced.
    Per-image scores go to logs/bleu_scores.csv under (split, beam). `grounding` (else the config's, see
    `load_grounding`) says whether the captions are right about their images.
    """
    evaluator = Evaluator(tokenizer, *split_images(builder, captions, config.training.eval_max_images))
    if not len(evaluator):
        raise ConfigError(f"the {split_name} split has no images to evaluate: check the split ratios")
    grounding = grounding if grounding is not None else load_grounding(config.data, captions)
    result = evaluator.evaluate(model, beam_size or config.training.beam_size, grounding)
    warning = collapse_warning(result.scores["distinct_share"], config.training.collapse_threshold, f"the {split_name} split")
    if warning:
        log.warning("%s", warning)
    write_per_image_rows(result, artifacts_dir, split_name)
    name = write_predictions_file(result, artifacts_dir, split_name, beside_run).name
    if tracker is not None:
        record_in_tracker(result, tracker, split_name, name)
    print_examples(result, show)
    return result.scores


def write_per_image_rows(result: Evaluation, artifacts_dir, split: str) -> Path:
    """The (split, beam) rows of logs/bleu_scores.csv: each image's prediction and scores."""
    return write_per_image_scores(Path(artifacts_dir), split, result.beam_size, result.per_image)


def write_predictions_file(result: Evaluation, artifacts_dir, split: str, beside_run: bool = False) -> Path:
    """predictions_<split>.json, or predictions_<split>_beam<k>.json `beside_run`: scores and each image's caption
    (with its attention for the first GALLERY_SIZE images, which the report draws)."""
    records = [
        _record(image_id, caption, references, position < GALLERY_SIZE)
        for position, (image_id, caption, references) in enumerate(zip(result.image_ids, result.captions, result.references))
    ]
    name = predictions_name(split, result.beam_size if beside_run else None)
    return write_predictions(Path(artifacts_dir), name, split, result.beam_size, result.scores, records)


def record_in_tracker(result: Evaluation, tracker, split: str, predictions: str) -> None:
    """The scores into the run summary, and what was evaluated into its `evaluation` section."""
    tracker.log_bleu_scores(**{f"bleu{n}": result.scores[f"bleu{n}"] for n in range(1, 5)})
    tracker.log_scores(**{k: v for k, v in result.scores.items() if not k.startswith("bleu")})
    tracker.sections["evaluation"] = {
        "split": split,
        "beam_size": result.beam_size,
        "images": len(result.image_ids),
        "predictions": predictions,
    }


def print_examples(result: Evaluation, show: int = 5) -> None:
    """The first `show` images' predicted caption and references."""
    for image_id, caption, references in list(zip(result.image_ids, result.captions, result.references))[:show]:
        print(f"\n{image_id}\n  predicted: {caption.text}")
        for reference in references:
            print(f"  reference: {reference}")


def score_table(scores: dict, indent: str = "") -> str:
    """One line per score, right-aligned names, 4 decimals; a score with nothing to count reads n/a."""
    return "\n".join(
        f"{indent}{name:>8}: {value:.4f}" if value is not None else f"{indent}{name:>8}: n/a (nothing to count)"
        for name, value in scores.items()
    )


def _record(image_id: str, caption, references: list[str], with_attention: bool) -> dict:
    record = {"image_id": image_id, "prediction": caption.text, "score": float(caption.score), "references": references}
    if with_attention and caption.attention is not None:
        record["attention"] = [[round(float(a), 4) for a in row] for row in caption.attention]
    return record
