"""Feature extractors by name: one global table that config names resolve against."""

from __future__ import annotations

import warnings
from collections.abc import Callable

from training.errors import unknown_extractor

# One table for the whole process: the seed README registers through a fresh
# `FeatureExtractorRegistry()` and expects `get_feature_extractor` to see it.
_EXTRACTORS: dict[str, type] = {}
# Families of names '<prefix>:<spec>' (keras_hub:<preset>), resolved when looked up: {prefix: make(name, spec) -> class}.
_FAMILIES: dict[str, Callable[[str, str], type]] = {}


class FeatureExtractorRegistry:
    """A handle on the global extractor table; every instance sees every registration."""

    def register(self, name: str, cls: type) -> type:
        from training.features.base import BaseFeatureExtractor

        if not (isinstance(cls, type) and issubclass(cls, BaseFeatureExtractor)):
            raise TypeError(f"cannot register {cls!r} as '{name}': it must subclass BaseFeatureExtractor")
        old = _EXTRACTORS.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            # Re-running a notebook cell re-registers the same class; replacing another class is worth a word.
            warnings.warn(f"feature extractor '{name}': {old.__qualname__} replaced by {cls.__qualname__}", stacklevel=2)
        _EXTRACTORS[name] = cls
        return cls

    def get(self, name: str, **kwargs):
        return self.lookup(name)(**kwargs)

    def lookup(self, name: str) -> type:
        if name in _EXTRACTORS:
            return _EXTRACTORS[name]
        prefix, colon, spec = str(name).partition(":")
        if colon and prefix in _FAMILIES:
            return _FAMILIES[prefix](name, spec)
        raise ValueError(unknown_extractor(name, self.names()))

    def names(self) -> list[str]:
        return sorted(_EXTRACTORS) + [f"{prefix}:<preset>" for prefix in sorted(_FAMILIES)]

    def __contains__(self, name: str) -> bool:
        prefix, colon, _ = str(name).partition(":")
        return name in _EXTRACTORS or bool(colon and prefix in _FAMILIES)


def register_extractor(name: str):
    """Class decorator: `@register_extractor("MyModel")` registers the class under that name."""

    def decorate(cls: type) -> type:
        return FeatureExtractorRegistry().register(name, cls)

    return decorate


def register_family(prefix: str, make: Callable[[str, str], type]) -> None:
    """Names '<prefix>:<spec>' resolve to `make(name, spec)`, an extractor class (e.g. one per keras-hub preset)."""
    _FAMILIES[prefix] = make


def get_feature_extractor(name: str, **kwargs):
    """Build the extractor registered as `name`, e.g. ("EfficientNetB3", image_size=(300, 300))."""
    return FeatureExtractorRegistry().get(name, **kwargs)


def extractor_for(model_config, **kwargs):
    """The extractor a run's model config describes: its name, image size, weights and the keys it takes
    (fine_tune_from)."""
    cls = FeatureExtractorRegistry().lookup(model_config.feature_extractor)
    settings = dict(image_size=model_config.image_size, weights=model_config.extractor_weights)
    return cls(**settings, **cls.config_spec(model_config), **kwargs)


def available_extractors() -> list[str]:
    return FeatureExtractorRegistry().names()
