"""The toolkit's own error classes.

Every error a user can cause (bad flags, bad files, a wrong base model) is raised as a
subclass of `RobertaLoraError`, with a message that says what was received, what was
expected and how to fix it. The CLI prints these without a stack trace.
"""

from __future__ import annotations


class RobertaLoraError(Exception):
    """Base class for every error the toolkit raises on bad input."""


class ConfigError(RobertaLoraError, ValueError):
    """An invalid argument, flag or configuration value."""


class AdapterError(RobertaLoraError):
    """An adapter directory or file that cannot be loaded (corrupt, wrong shapes, wrong base)."""


class DataError(RobertaLoraError):
    """A data file that cannot be read as the task expects.

    Args:
        message: what is wrong and how to fix it.
        path: the file, when known.
        line: the 1-based line (or record number for JSON), when known.
    """

    def __init__(self, message: str, path: str | None = None, line: int | None = None) -> None:
        location = ""
        if path is not None:
            location = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(location + message)
        self.path = path
        self.line = line


def first_line(error: BaseException, limit: int | None = 300) -> str:
    """The first line of `error`'s message, cut to `limit` characters, to quote inside a one-line message;
    the exception's class name when the message is empty (a bare `OSError()`)."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line if limit is None else line[:limit]
