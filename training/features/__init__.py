"""Image features: extractor registry, keras.applications backbones, the on-disk feature store."""

# Imported for their registrations: each module registers its extractors by name.
from training.features import applications, keras_hub, patches  # noqa: E402,F401
from training.features.base import BaseFeatureExtractor
from training.features.registry import (
    FeatureExtractorRegistry,
    available_extractors,
    get_feature_extractor,
    register_extractor,
)
from training.features.store import FeatureStore  # noqa: E402

__all__ = [
    "BaseFeatureExtractor",
    "FeatureExtractorRegistry",
    "FeatureStore",
    "available_extractors",
    "get_feature_extractor",
    "register_extractor",
]
