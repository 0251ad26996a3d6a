"""Errors a user causes and can fix (a config key, a path, a data file): commands print them in one line, exit 2."""

import difflib


class UserInputError(ValueError):
    """Bad input: the message names the file, line or key at fault and what to do."""


def unknown_extractor(name: str, names: list[str]) -> str:
    """What to say of a feature_extractor name that is not one of `names`."""
    by_lower = {known.lower(): known for known in names}
    close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=1, cutoff=0.6)
    hint = f"did you mean '{by_lower[close[0]]}'? " if close else ""
    return f"unknown feature extractor '{name}' (config key 'feature_extractor'); {hint}valid names: {', '.join(sorted(names))}"
