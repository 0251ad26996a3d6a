"""Main entrypoint: every stage of a training run in order, from captions file to scored model.

python -m training.train --config training/config.yaml [--set epochs=3 ...] [--resume | --fresh]
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
import sys
import time
from pathlib import Path

from training import cli
from training.configs import Config, ConfigError, load_config
from training.configs.training_config import BUILT_IN_EXTRACTORS, BUILT_IN_FAMILIES, check_weights_file, is_weights_file
from training.errors import unknown_extractor
from training.run.artifacts import CHECKPOINT, FINAL_MODEL, RESUME_DIR, SPLITS_FILE, XE_MODEL
from training.run.experiment_tracking import ExperimentTracker
from training.run.lifecycle import (
    check_rerun,
    check_resume_files,
    finished_and_unchanged,
    keep_aside,
    latest_state,
    raise_terminated,
)
from training.utils.io import atomic_path, ensure_dir, remove_stale_temporaries, save_json
from training.utils.logging import draws_progress, import_tensorflow_quietly
from training.utils.seeds import set_global_seed

log = logging.getLogger(__name__)


def require_path(path: str | None, key: str, kind: str = "file") -> Path:
    """A path from the config that must exist; the error names the config key to fix."""
    if not path:
        raise ConfigError(f"'{key}' is not set: point it at the {kind}")
    resolved = Path(path)
    if resolved.exists() and resolved.is_dir() != (kind == "folder"):
        found = "a folder" if resolved.is_dir() else "a file"
        raise ConfigError(
            f"'{key}' must be a {kind} but {resolved.resolve()} is {found} (edit '{key}' in the config or pass --set {key}=...)"
        )
    if not resolved.exists():
        raise ConfigError(f"'{key}': {kind} not found: {resolved.resolve()} (edit '{key}' in the config or pass --set {key}=...)")
    return resolved


def require_folder_or_nothing(path: str | None, key: str) -> None:
    """A folder the run creates: anything but a folder in its place stops the run, naming the key."""
    if path and Path(path).exists() and not Path(path).is_dir():
        raise ConfigError(
            f"'{key}' must be a folder but {Path(path).resolve()} is a file: "
            f"point '{key}' elsewhere (--set {key}=...) or move that file"
        )


def check_glove_header(path: Path, embedding_dim: int) -> None:
    """The GloVe file's first line must hold a word and `embedding_dim` numbers (checked before any work)."""
    with open(path, "rb") as handle:
        first = handle.readline().rstrip(b"\r\n").rstrip(b" ").split(b" ")
    if len(first) - 1 != embedding_dim:
        raise ConfigError(
            f"{path}: vectors have {len(first) - 1} values (line 1) but embedding_dim is {embedding_dim}; "
            f"set embedding_dim to {len(first) - 1} or point glove_path at a file of {embedding_dim}-d vectors"
        )


class TrainingPipeline:
    """Load -> clean -> split -> vocabulary -> embeddings -> features -> datasets -> train -> evaluate."""

    def __init__(self, config_path: str | Path | Config, overrides: list[str] | None = None, callbacks: list | None = None):
        config = config_path if isinstance(config_path, Config) else load_config(config_path, overrides)
        # Absolute from here on, and so in the snapshot: the run folder then works from any working directory.
        self.config = config.with_absolute_paths()
        self.callbacks = list(callbacks or [])  # extra Keras callbacks for model.fit
        self.artifacts_dir = Path(self.config.data.artifacts_dir)  # created once the inputs are checked
        self.tracker: ExperimentTracker | None = None
        self.extractor = None  # the feature extractor, once made
        self.grounding = None  # what says whether captions are right about their images (scenes or COCO instances)

    # -- data ------------------------------------------------------------------------------------
    def load_captions(self):
        from training.data.caption_loader import CaptionLoader, create_splits
        from training.data.preprocessor import CaptionPreprocessor

        d = self.config.data
        captions_file = require_path(d.captions_file, "captions_file")
        loader = CaptionLoader(d.captions_format)
        captions = CaptionPreprocessor().process(loader.load(captions_file))
        if d.max_images:
            captions = dict(list(captions.items())[: d.max_images])
        split = create_splits(captions, d.train_split, d.val_split, d.test_split, seed=d.seed, file_splits=loader.file_splits)
        log.info("captions: %s", split.summary())
        return split

    def check_inputs(self) -> None:
        """Fail on a missing captions file, images folder or GloVe file, or a GloVe dimension other than embedding_dim."""
        d = self.config.data
        require_path(d.captions_file, "captions_file")
        require_path(d.images_path, "images_path", kind="folder")
        if d.glove_path:
            check_glove_header(require_path(d.glove_path, "glove_path"), self.config.model.embedding_dim)
        if d.scenes_file:
            require_path(d.scenes_file, "scenes_file")
        if d.coco_instances_file:
            require_path(d.coco_instances_file, "coco_instances_file")
        check_weights_file(self.config.model.extractor_weights)
        require_folder_or_nothing(d.artifacts_dir, "artifacts_dir")
        require_folder_or_nothing(d.features_dir, "features_dir")

    def check_splits(self, split) -> None:
        """Training needs images in every split (val: validation loss; test: the scores): refuse an empty one up front."""
        d = self.config.data
        for name in ("train", "val", "test"):
            if not getattr(split, name):
                total = len(split.train) + len(split.val) + len(split.test)
                raise ConfigError(
                    f"the {name} split has no images ({total} images in all, train/val/test splits "
                    f"{d.train_split}/{d.val_split}/{d.test_split}): raise {name}_split"
                    + (" or max_images" if d.max_images else "")
                    + " so that it gets at least one image"
                )

    def load_grounding(self, split):
        """The scenes or COCO instances of every image of the run, read (and checked) before anything is written."""
        from training.evaluation.evaluator import load_grounding

        references = {**split.train, **split.val, **split.test}
        grounding = load_grounding(self.config.data, references)
        if self.config.data.scenes_file:
            grounding.require(references)  # every image has a scene (CocoObjects.load checks its own)
        return grounding

    def fit_vocabulary(self, split):
        """The vocabulary of the training captions; one that keeps no word (word_count_threshold too high) is refused
        (checked before anything is written, and again on the split left once unreadable images are skipped)."""
        from training.data.tokenizer import Tokenizer

        threshold = self.config.data.word_count_threshold
        tokenizer = Tokenizer(min_word_count=threshold).fit(caption for captions in split.train.values() for caption in captions)
        markers = {tokenizer.start_token, tokenizer.end_token}
        top = max(
            (item for item in tokenizer.word_counts.items() if item[0] not in markers), key=lambda item: item[1], default=None
        )
        if top is not None and top[1] < threshold:
            raise ConfigError(
                f"'word_count_threshold' is {threshold} but no word of the training captions occurs that often "
                f"(the most frequent, {top[0]!r}, occurs {top[1]} times): every caption would be <unk>; "
                f"lower word_count_threshold (e.g. --set word_count_threshold={min(5, top[1])})"
            )
        return tokenizer

    def check_images(self, split) -> None:
        """Image files missing beyond max_bad_image_fraction stop the run before anything is written (the store
        still holds the features of images moved away since, so those need no file)."""
        from training.data.image_files import check_missing_images

        d = self.config.data
        image_ids = list(split.train) + list(split.val) + list(split.test)
        check_missing_images(image_ids, d.images_path, d.features_dir or d.artifacts_dir, d.max_bad_image_fraction)

    def check_extractor_name(self) -> None:
        """An unknown feature_extractor, told before TensorFlow loads (names registered in this process and
        '<family>:<preset>' names of a built-in family count too)."""
        registry = sys.modules.get("training.features.registry")
        names = set(BUILT_IN_EXTRACTORS) | set(registry.available_extractors() if registry else ())
        names |= {f"{family}:<preset>" for family in BUILT_IN_FAMILIES}
        name = self.config.model.feature_extractor
        family, colon, _ = name.partition(":")
        if name not in names and not (colon and family in BUILT_IN_FAMILIES):
            raise ConfigError(unknown_extractor(name, sorted(names)))

    def check_extractor(self) -> None:
        """An unknown feature_extractor, a feature_dim it does not give, or a weights file it cannot load stops the
        run before anything is written. A backbone given a weights file, or whose size shows only once it is built
        (keras-hub), is built here and kept for the extraction."""
        from training.features import FeatureExtractorRegistry

        m = self.config.model
        feature_dim = FeatureExtractorRegistry().lookup(m.feature_extractor).FEATURE_DIM
        if not feature_dim or is_weights_file(m.extractor_weights) or m.fine_tune_from is not None:
            feature_dim = self.feature_extractor().feature_dim
        if feature_dim != m.feature_dim:
            raise ConfigError(
                f"'feature_dim' is {m.feature_dim} but {m.feature_extractor} gives {feature_dim}: set feature_dim: {feature_dim}"
            )

    def feature_extractor(self):
        """The run's feature extractor, made once (its network is built when first used)."""
        from training.features.registry import extractor_for

        if self.extractor is None:
            self.extractor = extractor_for(self.config.model)
        return self.extractor

    def extract_features(self, image_ids: list[str]):
        from training.features import FeatureStore
        from training.features.store import FeatureStoreConflict, link_store

        images_path = require_path(self.config.data.images_path, "images_path", kind="folder")
        extractor = self.feature_extractor()  # its feature_dim checked by check_extractor, before anything was written
        features_dir = Path(self.config.data.features_dir or self.artifacts_dir)
        try:
            store = FeatureStore.build(
                features_dir,
                extractor,
                image_ids,
                images_path,
                max_bad_fraction=self.config.data.max_bad_image_fraction,
                verbose=int(draws_progress(sys.stderr)),  # the bars only on a terminal; the store logs a summary line
            )
            if features_dir.resolve() != self.artifacts_dir.resolve():  # a shared store: the run folder links to it
                link_store(features_dir, self.artifacts_dir)
        except FeatureStoreConflict as error:
            raise ConfigError(f"'features_dir': {error}") from None
        if store.skipped:
            shown = "".join(f"\n  {entry['path']}: {entry['reason']}" for entry in store.skipped[:5])
            more = f"\n  ... and {len(store.skipped) - 5} more" if len(store.skipped) > 5 else ""
            log.warning(
                "skipping %d unreadable image(s) of %d (max_bad_image_fraction=%s):%s%s",
                len(store.skipped),
                len(image_ids),
                self.config.data.max_bad_image_fraction,
                shown,
                more,
            )
        return store

    def embedding_matrix(self, tokenizer):
        from training.data.tokenizer import GloVeEmbeddings

        d, m = self.config.data, self.config.model
        if not d.glove_path:
            log.warning("no glove_path: word embeddings start random")
            return None
        glove = GloVeEmbeddings(str(require_path(d.glove_path, "glove_path")), m.embedding_dim)
        return glove.create_embedding_matrix(tokenizer)

    # -- the run ---------------------------------------------------------------------------------
    def create_trainer(self):
        from training.trainers import DistributedTrainer, Trainer

        if self.config.training.distribution == "none":
            return Trainer(self.config, self.artifacts_dir, self.tracker)
        return DistributedTrainer(self.config, self.artifacts_dir, self.tracker)

    def run(self) -> dict:
        """The whole run, holding artifacts_dir (RunFolderBusy at once when another run holds it)."""
        from training.run.run_lock import hold_run_folder

        self.check_inputs()  # before the lock creates the folder: a mistyped path leaves nothing behind
        self.check_extractor_name()
        if not _is_chief_task(self.config):  # the workers of one multi-worker run share the chief's folder
            return self._run()
        with hold_run_folder(self.artifacts_dir):
            return self._run()

    def _run(self) -> dict:
        started = time.perf_counter()
        # Nothing is written to the run folder before the inputs are checked and the rerun allowed.
        split = self.load_captions()
        self.check_splits(split)
        self.grounding = self.load_grounding(split)
        tokenizer = self.fit_vocabulary(split)
        self.check_images(split)
        fresh = not self.config.training.resume
        if not fresh:
            check_rerun(self.artifacts_dir, self.config)
            nothing_to_do = finished_and_unchanged(self.artifacts_dir, self.config)
            if nothing_to_do:
                log.info("%s holds this finished run with this config; nothing to do: %s", self.artifacts_dir, nothing_to_do)
                return {"artifacts_dir": str(self.artifacts_dir), "unchanged": True}
            check_resume_files(self.artifacts_dir)
        # TensorFlow loads only from here on: a refused or finished rerun stops in a fraction of a second.
        import_tensorflow_quietly()
        trainer = self.prepare_run_folder(fresh)
        split, store = self.prepare_features(split)
        if store.skipped:
            tokenizer = self.fit_vocabulary(split)
        builder = self.vocabulary_and_batches(tokenizer, split, store, trainer)
        model = trainer.build_model(tokenizer.vocab_size, builder.max_length, self.embedding_matrix(tokenizer))
        trainer.train(
            model,
            builder.build(split.train, first_epoch=trainer.initial_epoch),
            builder.build(split.val, training=False),
            callbacks=self.callbacks,
            steps_per_epoch=builder.steps(split.train),
        )
        if not trainer.is_chief:
            return {}
        scores = self.finish(model, tokenizer, builder, split, trainer)
        elapsed = time.perf_counter() - started
        self.print_summary(scores, elapsed)
        return {"scores": scores, "artifacts_dir": str(self.artifacts_dir), "wall_time_seconds": elapsed}

    def prepare_run_folder(self, fresh: bool):
        """Seed, precision and trainer; with --fresh the old run set aside; the folder and its tracker."""
        from training.utils import configure_precision

        c = self.config
        set_global_seed(c.data.seed)
        configure_precision(c.training.use_mixed_precision)
        trainer = self.create_trainer()  # before other TensorFlow work: multi-worker setup requires it
        self.check_extractor()
        if fresh and trainer.is_chief:
            kept = keep_aside(self.artifacts_dir)
            if kept:
                log.warning("--fresh: the previous run was moved to %s; the feature store stays for reuse", kept)
        ensure_dir(self.artifacts_dir)
        if trainer.is_chief:
            remove_temporaries_of_killed_writes(self.artifacts_dir)
            self.tracker = ExperimentTracker(self.artifacts_dir, run_name=c.training.run_name, seed=c.data.seed)
            self.tracker.log_config(c.to_dict())
        trainer.tracker = self.tracker
        return trainer

    def prepare_features(self, split):
        """The feature store of every image; unreadable images leave the splits; splits.json."""
        from training.data.caption_loader import DataSplit

        store = self.extract_features(list(split.train) + list(split.val) + list(split.test))
        if store.skipped:
            split = DataSplit(
                *({k: v for k, v in part.items() if k in store.index} for part in (split.train, split.val, split.test))
            )
            if self.tracker:
                self.tracker.log_bad_images(store.skipped)
        if _is_chief_task(self.config):  # another worker's write could meet the chief's clean-up of temporaries
            save_json({name: list(getattr(split, name)) for name in ("train", "val", "test")}, self.artifacts_dir / SPLITS_FILE)
        return split, store

    def vocabulary_and_batches(self, tokenizer, split, store, trainer):
        """The vocabulary saved, the dataset builder, and the validation captioning the trainer reports."""
        from training.data.caption_loader import get_max_caption_length
        from training.data.dataset import DatasetBuilder

        c = self.config
        if trainer.is_chief:
            tokenizer.save(self.artifacts_dir)
        max_length = c.data.max_caption_length or get_max_caption_length(split.train)
        augment = c.training.augment if self.feature_extractor().STORES_PIXELS else ()
        if c.training.augment and not augment:
            log.warning(
                "augment: %s stores computed features, not pixels: the training images are not augmented",
                c.model.feature_extractor,
            )
        log.info("vocabulary: %d words; captions up to %d tokens", tokenizer.vocab_size, max_length)
        builder = DatasetBuilder(
            store.features,
            store.index,
            tokenizer,
            max_length - 1,
            c.training.batch_size,
            c.data.seed,
            pooled=not c.model.use_regions,
            augment=augment,
        )
        trainer.steps_per_epoch = builder.steps(split.train)
        if c.training.val_caption_images:
            trainer.caption_validation = self.caption_validation(tokenizer, builder, split)
        return builder

    def caption_validation(self, tokenizer, builder, split):
        """The validation images captioned every epoch, scored against the run's grounding, watched for collapse."""
        from training.callbacks.caption_metrics import CaptionValidation

        t = self.config.training
        return CaptionValidation(
            tokenizer, builder, split.val, t.val_caption_images, grounding=self.grounding, collapse_threshold=t.collapse_threshold
        )

    def finish(self, model, tokenizer, builder, split, trainer) -> dict:
        """The final model (best checkpoint, or SCST's when it beats it), its test scores, the summary and report."""
        import keras

        from training.evaluation.diversity import collapse_warning
        from training.evaluation.report import build_report
        from training.evaluation.split import evaluate_split
        from training.run.mlflow_logging import log_run_to_mlflow

        c = self.config
        checkpoint = self.artifacts_dir / CHECKPOINT
        if checkpoint.is_file():  # the best model by `monitor` is the one we ship and score
            model = keras.saving.load_model(checkpoint)
        xe_model, stage = model, None
        if c.training.scst_epochs:
            model, stage = self.self_critical_stage(model, tokenizer, builder, split, trainer)
        with atomic_path(self.artifacts_dir / FINAL_MODEL) as tmp:
            model.save(tmp)
        if stage and stage["final_model"] == "scst":
            print("\nCross-entropy model (before SCST) on the test split:")
            before = evaluate_split(
                xe_model,
                tokenizer,
                builder,
                split.test,
                c,
                self.artifacts_dir,
                split_name="test_xe",
                show=0,
                grounding=self.grounding,
            )
        scores = evaluate_split(
            model, tokenizer, builder, split.test, c, self.artifacts_dir, tracker=self.tracker, grounding=self.grounding
        )
        if stage and stage["final_model"] == "scst":
            warning = collapse_warning(
                scores["distinct_share"],
                c.training.collapse_threshold,
                "SCST's test captions",
                before["distinct_share"],
                "the cross-entropy model's",
            )
            if warning:
                log.warning("%s", warning)
        if stage:
            self.tracker.sections["scores_before_scst"] = before if stage["final_model"] == "scst" else scores
        self.tracker.log_artifact("model", str(self.artifacts_dir / FINAL_MODEL))
        self.tracker.finalize()
        build_report(self.artifacts_dir)
        log_run_to_mlflow(self.artifacts_dir)
        if stage:
            self.print_stages(stage, self.tracker.sections["scores_before_scst"], scores)
        return scores

    def self_critical_stage(self, xe_model, tokenizer, builder, split, trainer):
        """SCST from the best cross-entropy model (kept as image_caption_model_xe.keras): (final model, facts)."""
        from training.evaluation.evaluator import Evaluator, split_images
        from training.trainers.scst import GroundingCheck, SelfCriticalTrainer

        c = self.config
        with atomic_path(self.artifacts_dir / XE_MODEL) as tmp:
            xe_model.save(tmp)
        xe_epochs = int(latest_state(self.artifacts_dir / RESUME_DIR)[1]["epoch"])
        validation = trainer.caption_validation or self.caption_validation(tokenizer, builder, split)
        check = None
        if self.grounding is not None and split.val:  # is SCST's model less grounded, captioned as the test is?
            check = GroundingCheck(
                lambda: Evaluator(
                    tokenizer, *split_images(builder, split.val, c.training.eval_max_images), grounding=self.grounding
                ),
                c.training.beam_size,
            )
        stage = SelfCriticalTrainer(
            c,
            self.artifacts_dir,
            tokenizer,
            builder,
            split.train,
            validation,
            tracker=self.tracker,
            callbacks=self.callbacks,
            check=check,
        )
        model, facts = stage.run(xe_model, xe_epochs)
        self.tracker.sections["scst"] = facts
        return model, facts

    @staticmethod
    def print_stages(stage: dict, before: dict, after: dict) -> None:
        print(
            f"\nTest scores of both stages (final model: {'SCST' if stage['final_model'] == 'scst' else 'cross-entropy'}; "
            f"{stage['final_model_reason']}):"
        )
        print(f"  {'':>16}  {'before SCST':>11}  {'final':>8}")
        show = lambda value, width: f"{value:>{width}.4f}" if value is not None else f"{'n/a':>{width}}"  # noqa: E731
        for name, value in after.items():
            print(f"  {name:>16}  {show(before.get(name), 11)}  {show(value, 8)}")

    def print_summary(self, scores: dict, elapsed: float) -> None:
        print(f"\nTest scores ({self.config.training.beam_size}-beam):")
        for name, value in scores.items():
            print(f"  {name:>8}: {value:.4f}" if value is not None else f"  {name:>8}: n/a (nothing to count)")
        print(f"\nArtifacts in {self.artifacts_dir.resolve()}:")
        for path in sorted(self.artifacts_dir.iterdir()):
            if not path.name.startswith("."):
                print(f"  {path.name}{'/' if path.is_dir() else ''}")
        print(f"\nDone in {elapsed:.0f} s.")


def remove_temporaries_of_killed_writes(artifacts_dir: Path) -> None:
    """Delete the temporary files an interrupted write left in the run folder, never one still being written."""
    from training.features.store import build_lock

    # Another worker of a multi-worker run writes here only while it builds the feature store, under this lock.
    with build_lock(artifacts_dir):
        for path in remove_stale_temporaries(artifacts_dir):
            log.info("removed %s, left by an interrupted write", path)


def _is_chief_task(config: Config) -> bool:
    """Whether this process writes the run (TF_CONFIG read as TensorFlow does, before TensorFlow starts)."""
    if config.training.distribution != "multi_worker" or not os.environ.get("TF_CONFIG"):
        return True
    spec = json.loads(os.environ["TF_CONFIG"])
    task = spec.get("task") or {}
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0 and "chief" not in (spec.get("cluster") or {})


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("training.train", __doc__)
    parser.add_argument("--config", default="training/config.yaml", help="YAML config (default: %(default)s)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set epochs=3 (repeatable)",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue the interrupted run in artifacts_dir (the default)")
    group.add_argument(
        "--fresh",
        action="store_true",
        help="train from scratch; a run already in artifacts_dir is moved to its previous_runs/ folder (the feature store stays)",
    )
    args = parser.parse_args(argv)
    cli.start(args.log_level, import_tensorflow=False)  # a refused or finished rerun never starts TensorFlow
    overrides = args.overrides + (["resume=false"] if args.fresh else ["resume=true"] if args.resume else [])
    previous_handler = signal.signal(signal.SIGTERM, raise_terminated)  # a preempted machine's SIGTERM stops the run like Ctrl-C
    try:
        return cli.run(lambda: TrainingPipeline(args.config, overrides).run() and 0, explain=_explain_fault)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


# A full disk, a quota, a read-only or forbidden folder: the write faults a run explains in one line.
_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _explain_fault(error: Exception) -> int | None:
    """The exit code of a run fault explained in one line (interrupted, NaN loss, full disk); None for the others."""
    if "training.trainers" in sys.modules:  # these faults come from training, which imported it
        from training.trainers import NonFiniteLoss, TrainingInterrupted

        if isinstance(error, TrainingInterrupted):
            print(f"error: {error}", file=sys.stderr)
            return 143 if error.terminated else 130
        if isinstance(error, NonFiniteLoss):
            print(f"error: {error}", file=sys.stderr)
            return 1
    if "tensorflow" in sys.modules and _lost_worker(error):
        print(f"error: {_lost_worker(error)}", file=sys.stderr)
        return 1
    if isinstance(error, OSError) and error.errno in _WRITE_ERRORS:  # nothing already written is lost
        print(
            f"error: could not write {error.filename or 'a file'}: {error.strerror or error}. "
            "Free space (or fix permissions) and run the same command: it resumes from the last completed epoch.",
            file=sys.stderr,
        )
        return 1
    return None


def _lost_worker(error: Exception) -> str | None:
    """What to say when a multi-worker run lost a worker, or None for another error. TensorFlow's coordination
    service notices a worker that stopped sending heartbeats and aborts every collective op of the others."""
    import tensorflow as tf

    if not isinstance(error, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError)):
        return None
    tasks = sorted(set(re.findall(r"/job:\w+/replica:\d+/task:\d+", error.message)))
    return (
        f"the multi-worker run lost {' and '.join(tasks) or 'a worker'} ({type(error).__name__}: collective ops aborted). "
        "Start every worker again with the same command: the run resumes from the last completed epoch."
    )


if __name__ == "__main__":
    from training.train import main as imported_main  # run as training.train: its logger is named so

    sys.exit(imported_main())
