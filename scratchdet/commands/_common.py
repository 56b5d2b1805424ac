"""Helpers shared by the subcommands: the CLI's error type, argument types and user-facing checks."""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os

import torch

from ..engine.config import TrainConfig, _parse_value, check_finite
from ..structures.files import make_writable_dir
from ..models.io import load
from ..structures.errors import UserError


class CLIError(UserError):
    """A user error found by a command itself (a bad argument): one line, exit status 2."""


def finite_float(text: str) -> float:
    """argparse type: a float that is not NaN or infinite."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def threshold(text: str) -> float:
    """argparse type: a finite number in [0, 1] (a score or an IoU)."""
    value = finite_float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text!r}")
    return value


def writable_dir(path: str) -> str:
    """Create `path` if needed and make sure we can write there; CLIError otherwise."""
    try:
        make_writable_dir(path)
    except OSError as exc:
        raise CLIError(f"output folder {path!r} is not writable ({exc.strerror})") from None
    return path


def existing_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise CLIError(f"{what} not found: {path}")
    return path


def existing_dir(path: str, what: str) -> str:
    if not os.path.isdir(path):
        raise CLIError(f"{what} not found: {path}")
    return path


def pick_device(name: str | None) -> str:
    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: no CUDA GPU is visible")
    return name


def load_model(path: str, device: str = "cpu"):
    """Load a saved detector; CLIError with the reason for a missing or bad file."""
    existing_file(path, "weights file")
    try:
        model = load(path)
    except UserError:
        raise
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CLIError(str(exc)) from None
    return model.to(device).eval()


def last_line(message: str) -> str:
    """The error itself out of a message that carries a traceback (a DataLoader worker's error
    comes back as "Caught X in DataLoader worker ... Traceback ... pkg.X: the message")."""
    lines = [line for line in message.strip().splitlines() if line.strip()]
    if "Traceback (most recent call last)" not in message or len(lines) <= 1:
        return message.strip()
    last = lines[-1].strip()
    name, sep, rest = last.partition(": ")
    return rest if sep and name.replace(".", "").replace("_", "").isalnum() else last


def parse_set_options(items: list[str]) -> dict:
    """``--set KEY=VALUE`` options (training options of every run of a grid) as a dict, each value of
    its option's type; CLIError for an unknown key, a bad value, NaN or inf."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in known:
            raise CLIError(f"--set {item!r}: expected KEY=VALUE with a training option as KEY "
                           f"(known: {', '.join(sorted(known))})")
        try:
            overrides[key] = _parse_value(value, getattr(TrainConfig(), key))
        except (ValueError, json.JSONDecodeError) as exc:
            raise CLIError(f"--set {item}: {exc}") from None
    check_finite(overrides)
    return overrides
