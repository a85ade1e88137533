"""Error types that the command-line entry points turn into one clear line.

Anything raised as :class:`HsiStudyError` is a problem with the user's input or
environment (a bad file, flag or value), not a bug: the CLIs print its message
and exit with status 2 instead of showing a traceback (``--debug`` shows it).
"""

from __future__ import annotations


class HsiStudyError(Exception):
    """A user-facing error: the message names the thing, the rule and the fix."""


class DataValidationError(HsiStudyError, ValueError):
    """An HDF5 file, sample or array breaks a rule of the HS3-Bench layout."""


class ConfigError(HsiStudyError, ValueError):
    """A study setting (flag, fraction, budget) is out of its valid range."""


class ResultsWriteError(HsiStudyError, OSError):
    """A results file could not be written (read-only folder, full disk, a file in the way).

    Also an :class:`OSError`, so code that already treats I/O failures as such (retries, ``except
    OSError`` in CLIs) keeps working; ``path`` is the file or folder that failed, ``errno`` the cause.
    """

    def __init__(self, message: str, path: str = "", errno: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno

    def __reduce__(self) -> tuple:
        """Keep ``path`` and ``errno`` across pickling (Ray ships exceptions between processes)."""
        return type(self), (str(self.args[0]) if self.args else "", self.path, self.errno)


class CorruptPartError(HsiStudyError):
    """A Parquet part of the result store cannot be read (truncated or corrupt); ``path`` names it."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path

    def __reduce__(self) -> tuple:
        return type(self), (str(self.args[0]) if self.args else "", self.path)
