"""A finished run read back from its folder: its config, final model and vocabulary."""

from __future__ import annotations

from pathlib import Path

from training.configs import Config, ConfigError
from training.run.artifacts import FINAL_MODEL, SNAPSHOT_FILE, read_snapshot


def require_run_folder(artifacts_dir: str | Path, holding: str = "a finished run") -> Path:
    """`artifacts_dir` as a Path; a ConfigError naming --artifacts when it is a file or missing."""
    artifacts_dir = Path(artifacts_dir)
    if not artifacts_dir.is_dir():
        what = "a file" if artifacts_dir.exists() else "not found"
        raise ConfigError(f"--artifacts {artifacts_dir}: {what}; pass the artifacts_dir folder of {holding}")
    return artifacts_dir


def load_trained(artifacts_dir: str | Path):
    """(config, model, tokenizer) of a finished run; ConfigError when the folder does not hold one."""
    import keras

    import training.models  # noqa: F401 - registers the caption model's Keras classes for load_model
    from training.data.tokenizer import Tokenizer

    artifacts_dir = require_run_folder(artifacts_dir)
    raw = read_snapshot(artifacts_dir) if (artifacts_dir / SNAPSHOT_FILE).is_file() else None
    if raw is None:
        raise ConfigError(f"{artifacts_dir} holds no {SNAPSHOT_FILE}: is it the artifacts_dir of a finished run?")
    raw["data"]["artifacts_dir"] = str(artifacts_dir.resolve())  # the folder may have moved since
    config = Config.from_dict(raw, source=str(artifacts_dir / SNAPSHOT_FILE))
    model_path = artifacts_dir / FINAL_MODEL
    if not model_path.is_file():
        raise ConfigError(f"{model_path} not found: the run in {artifacts_dir} has not finished training")
    return config, keras.saving.load_model(model_path), Tokenizer.load(artifacts_dir)
