"""The package's user-facing error types.

A :class:`UserError` is caused by what the user gave (a path, a file, an option, a damaged
checkpoint, a full disk): the CLI prints it as one line and exits with status 2. Anything else
that escapes a command is a bug in the package and keeps its traceback.

The subclasses that replace a built-in exception also derive from it (``ValueError``,
``OSError``), so code that caught the built-in keeps working.
"""
from __future__ import annotations

__all__ = ["UserError", "ConfigError", "DataError", "BadImageError", "CheckpointError"]


class UserError(Exception):
    """An error the user can fix; its message is one line that says what and where."""


class ConfigError(UserError, ValueError):
    """An option or setting that is out of range, not a number, NaN or infinite."""


class DataError(UserError, ValueError):
    """A data set or annotation file that cannot be read; names the file (and line)."""


class BadImageError(UserError, OSError):
    """An image file that cannot be decoded; names the file."""


class CheckpointError(UserError, ValueError):
    """A checkpoint or weights file that is missing, truncated, damaged or cannot be written."""
