"""Errors that mean "bad input": the CLI prints them as one line and exits with status 2."""


class SmoothBlockError(Exception):
    """Base class: the message is one line that names the problem."""


class ConfigError(SmoothBlockError, ValueError):
    """A configuration field is unknown, of the wrong type, or out of range."""


class DataError(SmoothBlockError):
    """A data folder is missing, empty, or not in the ImageFolder layout."""


class CheckpointError(SmoothBlockError):
    """A checkpoint is corrupt, of another architecture, not a checkpoint, or would run code."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message cut to its first line (at most ``limit`` characters), else its type:
    the reason part of a one-line error about a library's failure."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
