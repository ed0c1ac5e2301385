"""Errors meant for people: the message says what is wrong and where."""


class MedopsError(Exception):
    """A user-facing failure. The CLI prints the message without a traceback."""


class ConfigError(MedopsError):
    """params.yaml (or a command-line override) is invalid."""


class DataError(MedopsError):
    """A data file is missing, corrupt, or not in the MedMNIST layout."""


class ValidationFailed(DataError):
    """Great Expectations found problems in a dataset."""
