"""Errors meant for people: the message says what is wrong and where, and never a password."""

import re


def redact(text: str) -> str:
    """Hide the password of any URI in a text (postgresql://user:secret@host -> user:***@host)."""
    return re.sub(r"(//[^:/@\s]+:)[^@/\s]+@", r"\1***@", text)


class MedopsError(Exception):
    """A user-facing failure. The CLI prints the message without a traceback."""


class ConfigError(MedopsError):
    """params.yaml (or a command-line override) is invalid."""


class DataError(MedopsError):
    """A data file is missing, corrupt, or not in the MedMNIST layout."""


class ValidationFailed(DataError):
    """Great Expectations found problems in a dataset."""
