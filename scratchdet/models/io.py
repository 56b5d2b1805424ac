"""Save and load a model with its config: ``scratchdet.save(model, path)`` / ``scratchdet.load(path)``.

The file is a ``torch.save`` dict of plain data (format tag, config dict,
state dict). Loading uses ``torch.load(weights_only=True)``, so it never runs
code from the file; anything that is not a well-formed checkpoint raises a
``ValueError`` that names the file.
"""
from __future__ import annotations

import os

import torch

from .registry import build_detector, build_model

__all__ = ["save", "load", "FORMAT", "VERSION"]

FORMAT = "scratchdet.model"
VERSION = 1


def save(model, path) -> None:
    """Write ``model.config`` and its weights to ``path`` (written to a temp file, then renamed)."""
    config = getattr(model, "config", None)
    if not isinstance(config, dict):
        raise TypeError("scratchdet.save: expected a model built by scratchdet.build_model (with a .config dict)")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "version": VERSION, "config": dict(config), "state_dict": state}
    class_names = getattr(model, "class_names", None)   # set by the trainer; label i = class_names[i-1]
    if class_names is not None:
        payload["class_names"] = [str(c) for c in class_names]
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(payload, tmp)
    os.replace(tmp, path)                 # a crash mid-write never leaves a truncated checkpoint


def _invalid(path, why: str) -> ValueError:
    return ValueError(f"scratchdet.load: {path!s} is not a valid scratchdet checkpoint: {why}")


def load(path, map_location="cpu", backbone=None):
    """Rebuild the model saved at ``path`` and load its weights; returned in eval mode.

    A model built with :func:`scratchdet.build_detector` around a user module needs a new
    instance of that module as ``backbone`` (its weights come from the file).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"scratchdet.load: no such file: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling refused, truncated zip, bad magic, ...: all mean "not our file"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _invalid(path, f"the file is corrupt, truncated or holds non-weight objects "
                             f"({type(exc).__name__}: {first_line})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise _invalid(path, "missing the scratchdet format tag (a plain state dict or another program's file?)")
    if payload.get("version") != VERSION:
        raise _invalid(path, f"format version {payload.get('version')!r}, this scratchdet reads {VERSION}")
    config, state = payload.get("config"), payload.get("state_dict")
    if not isinstance(config, dict) or not isinstance(state, dict) or "name" not in config:
        raise _invalid(path, "the config or the state dict is missing or malformed")
    if config.get("arch") == "custom" and backbone is None:
        raise ValueError(f"scratchdet.load: {path} holds a detector around a user backbone "
                         f"({config.get('backbone') or 'an nn.Module'}); pass a new instance of it: "
                         "scratchdet.load(path, backbone=...)")
    try:
        if config.get("arch") == "custom":
            options = {k: v for k, v in config.items() if k not in ("name", "num_classes", "backbone")}
            model = build_detector(backbone, config["num_classes"], **options)
        else:
            model = build_model(**config)
    except (TypeError, ValueError) as exc:
        raise _invalid(path, f"its config does not build a model ({exc})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise _invalid(path, f"the weights do not fit the config ({str(exc).splitlines()[0]})") from None
    names = payload.get("class_names")
    if names is not None:
        if not isinstance(names, list) or len(names) != model.num_classes - 1:
            raise _invalid(path, "class_names does not list one name per object class")
        model.class_names = list(names)
    return model.eval()
