"""The `scratchdet` command. Each subcommand lives in scratchdet/commands/<name>.py
and provides ``register(subparsers)``, which adds its parser and sets ``func``."""
from __future__ import annotations

import argparse
import importlib
import sys

# In the order `scratchdet --help` lists them.
COMMANDS = ["demo", "train", "eval", "detect", "ablate", "synth", "plot", "export", "info"]


class CLIError(Exception):
    """A user error: printed as one line, exit status 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scratchdet",
        description="Train single-shot detectors from scratch (ScratchDet), evaluate, detect, export.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"scratchdet.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"scratchdet.commands.{name}":
                continue  # this command is not part of this build
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"scratchdet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"scratchdet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
