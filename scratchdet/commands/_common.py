"""Helpers shared by the subcommands: argument types and user-facing checks."""
from __future__ import annotations

import os

from ..cli import CLIError


def writable_dir(path: str) -> str:
    """Create `path` if needed and make sure we can write there; CLIError otherwise."""
    from ..structures.files import make_writable_dir

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
    import torch

    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: no CUDA GPU is visible")
    return name


def load_model(path: str, device: str = "cpu"):
    """Load a saved detector; CLIError with the reason for a missing or bad file."""
    import scratchdet

    existing_file(path, "weights file")
    try:
        model = scratchdet.load(path)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CLIError(str(exc)) from None
    return model.to(device).eval()
