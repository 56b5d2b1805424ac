"""The `scratchdet` command. Each subcommand lives in scratchdet/commands/<name>.py
and provides ``register(subparsers)``, which adds its parser and sets ``func``.

Errors, the one rule: what the user can fix is one line on stderr and exit status 2, a bug is
a traceback.

- a bad argument (argparse's check, e.g. a threshold that is NaN) prints
  ``scratchdet <cmd>: error: <message> (see scratchdet <cmd> --help)``;
- a :class:`~scratchdet.structures.errors.UserError` (a bad option, data set, image, checkpoint;
  the commands' own ``CLIError`` is one) prints ``scratchdet <cmd>: error: <message>``;
- an ``OSError`` about a user path (not found, not a folder, a folder, permission denied, disk
  full, quota exceeded, read-only file system) prints the same with the path and the system's
  reason;
- anything else keeps its traceback and exit status 1: it is a bug in the package.
"""
from __future__ import annotations

import argparse
import errno
import sys

from .commands import ablate, compare, demo, detect, export, info, plot, quantize, synth, train
from .commands import eval as evaluate
from .commands._common import CLIError, last_line
from .structures.errors import UserError

__all__ = ["COMMANDS", "CLIError", "build_parser", "main", "user_error_message"]

# In the order `scratchdet --help` lists them.
_MODULES = {"demo": demo, "train": train, "eval": evaluate, "detect": detect, "ablate": ablate, "synth": synth,
            "plot": plot, "export": export, "info": info, "quantize": quantize, "compare": compare}
COMMANDS = list(_MODULES)

# OSErrors that are about a path the user gave or the disk they point at, not about the package.
_USER_OS_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
_USER_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "disk quota exceeded",
                errno.EROFS: "read-only file system"}


class _OneLineParser(argparse.ArgumentParser):
    """argparse's own errors (a bad value, a missing argument) as the one line every error is."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="scratchdet",
        description="Train single-shot detectors from scratch (ScratchDet), evaluate, detect, export.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in _MODULES.values():
        module.register(sub)
    return parser


def user_error_message(exc: BaseException) -> str | None:
    """The one line the CLI prints for a user error, or None for a bug (which keeps its traceback)."""
    if isinstance(exc, UserError):
        message = str(exc)
    elif isinstance(exc, OSError) and (isinstance(exc, _USER_OS_ERRORS) or exc.errno in _USER_ERRNOS):
        reason = _USER_ERRNOS.get(exc.errno) or exc.strerror
        if exc.filename is None:   # e.g. a write to an open file: no path to name
            message = str(exc) if exc.strerror is None else exc.strerror
            if reason is not None and reason not in message:
                message += f" ({reason})"
        else:
            paths = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "")
            message = f"{paths}: {reason}"
    else:
        return None
    # one line, whatever the message held (a DataLoader worker's error carries its traceback)
    return " ".join(last_line(message).split()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"scratchdet {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        message = user_error_message(exc)
        if message is None:
            raise
        print(f"scratchdet {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
