"""Configuration dataclasses and loading."""

from training.configs.training_config import (
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    TrainingConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    save_config,
)
from training.errors import UserInputError

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "TrainingConfig",
    "apply_overrides",
    "config_from_dict",
    "load_config",
    "save_config",
    "UserInputError",
]
