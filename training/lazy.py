"""Package names that load on first use: a package's __init__ lists them without importing their modules."""

from importlib import import_module


def lazy_names(package: str, exports: dict[str, str]):
    """A module-level __getattr__ for `package`: name -> getattr(import_module(package.<exports[name]>), name)."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(f"{package}.{exports[name]}"), name)

    return __getattr__
