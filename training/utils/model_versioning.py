"""The model registry's import path in the project's first README; the registry lives in training.run.model_versioning."""

from training.run.model_versioning import ModelIntegrityError, ModelVersionManager  # noqa: F401
