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
