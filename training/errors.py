"""Errors a user causes and can fix (a config key, a path, a data file): commands print them in one line, exit 2."""


class UserInputError(ValueError):
    """Bad input: the message names the file, line or key at fault and what to do."""
