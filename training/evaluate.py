"""Evaluation: caption a split with a finished run's model and score it (BLEU, METEOR, ROUGE-L, CIDEr).

    python -m training.evaluate --artifacts artifacts/demo --split test [--beam 3]

The results go beside the run's, never over them: predictions_<split>_beam<k>.json, and the
(split, beam) rows of logs/bleu_scores.csv.
"""

from __future__ import annotations

import sys
from pathlib import Path

from training import cli
from training.errors import UserInputError
from training.evaluation.loading import load_trained
from training.evaluation.split import evaluate_split, score_table
from training.run.artifacts import PER_IMAGE_SCORES, SPLITS_FILE, predictions_name


def evaluate_run(artifacts_dir: Path, split: str, beam_size: int | None = None) -> tuple[dict, int, Path]:
    """Score `split` of the run in `artifacts_dir`: (scores, beam size, predictions file written)."""
    from training.data.caption_loader import CaptionLoader
    from training.data.dataset import DatasetBuilder
    from training.data.preprocessor import CaptionPreprocessor
    from training.features import FeatureStore
    from training.utils.io import load_json

    config, model, tokenizer = load_trained(artifacts_dir)
    try:
        store, splits = FeatureStore.open(artifacts_dir), load_json(artifacts_dir / SPLITS_FILE)
    except FileNotFoundError as error:
        raise UserInputError(f"{error}: {artifacts_dir} is not a complete run folder") from None
    loader = CaptionLoader(config.data.captions_format)
    captions = CaptionPreprocessor().process(loader.load(config.data.captions_file))
    wanted = [i for i in splits[split] if i in store.index]
    builder = DatasetBuilder(store.features, store.index, tokenizer, model.max_length, pooled=not config.model.use_regions)
    beam_size = beam_size or config.training.beam_size
    scores = evaluate_split(
        model,
        tokenizer,
        builder,
        {i: captions[i] for i in wanted},
        config,
        artifacts_dir,
        beam_size=beam_size,
        split_name=split,
        beside_run=True,
    )
    return scores, beam_size, artifacts_dir / predictions_name(split, beam_size)


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("training.evaluate", __doc__)
    parser.add_argument("--artifacts", required=True, type=Path, help="artifacts_dir of a trained run")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument(
        "--beam",
        type=cli.int_range(1, cli.MAX_BEAM),
        default=None,
        help=f"beam size, 1 (greedy) to {cli.MAX_BEAM}; default: the run's beam_size",
    )
    args = parser.parse_args(argv)
    cli.start(args.log_level)
    return cli.run(lambda: _evaluate(args))


def _evaluate(args) -> int:
    scores, beam_size, written = evaluate_run(args.artifacts, args.split, args.beam)
    print(f"\n{args.split} split, beam {beam_size}:")
    print(score_table(scores))
    print(f"\nwrote {written} and the ({args.split}, beam {beam_size}) rows of {args.artifacts / PER_IMAGE_SCORES}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
