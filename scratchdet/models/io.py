"""Save and load a model with its config: ``scratchdet.save(model, path)`` / ``scratchdet.load(path)``.

The file is a ``torch.save`` dict of plain data: a format tag and version, the config as a plain
dict of :class:`~scratchdet.models.config.SSDConfig` fields, the state dict and the class names.
Loading uses ``torch.load(weights_only=True)``, so it never runs code from the file; anything that
is not a well-formed checkpoint raises :class:`~scratchdet.structures.errors.CheckpointError`
(a ``ValueError``) that names the file.

Versions: 1 wrote the config as the builder's argument dict (the same field names, some missing
in files from before the input and detection settings); 2 writes ``SSDConfig.to_dict()``. Both
load: a field a file lacks takes its default.
"""
from __future__ import annotations

import os

import torch

from ..structures.errors import CheckpointError, UserError
from ..structures.files import atomic_save
from .config import SSDConfig
from .ssd import SSD

__all__ = ["save", "load", "checkpoint_payload", "model_from_payload", "FORMAT", "VERSION", "READABLE_VERSIONS"]

FORMAT = "scratchdet.model"
VERSION = 2
READABLE_VERSIONS = (1, 2)


def save(model, path) -> None:
    """Write ``model.config`` and its weights to ``path`` atomically; a full disk raises CheckpointError."""
    atomic_save(checkpoint_payload(model), path)   # a crash or a full disk never leaves a truncated file


def checkpoint_payload(model) -> dict:
    """The dict :func:`save` writes (an int8 file embeds it)."""
    config = getattr(model, "config", None)
    if not isinstance(config, SSDConfig):
        raise TypeError("scratchdet.save: expected a model built by scratchdet.build_model (with an SSDConfig "
                        ".config)")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "version": VERSION, "config": config.to_dict(), "state_dict": state}
    class_names = getattr(model, "class_names", None)   # set by the trainer; label i = class_names[i-1]
    if class_names is not None:
        payload["class_names"] = [str(c) for c in class_names]
    return payload


def _invalid(path, why: str) -> CheckpointError:
    return CheckpointError(f"scratchdet.load: {path!s} is not a valid scratchdet checkpoint: {why}")


def load(path, map_location="cpu", backbone=None) -> SSD:
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
        # torch's first sentence: its advice to load with weights_only=False is no fix for a damaged file
        first_line = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else type(exc).__name__
        raise _invalid(path, f"the file is corrupt, truncated or holds non-weight objects "
                             f"({type(exc).__name__}: {first_line})") from None
    return model_from_payload(payload, path, backbone)


def model_from_payload(payload, path, backbone=None) -> SSD:
    """The model a :func:`checkpoint_payload` dict describes (``path`` names it in errors)."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise _invalid(path, "missing the scratchdet format tag (a plain state dict or another program's file?)")
    if payload.get("version") not in READABLE_VERSIONS:
        raise _invalid(path, f"format version {payload.get('version')!r}, this scratchdet reads "
                             f"{', '.join(map(str, READABLE_VERSIONS))}")
    values, state = payload.get("config"), payload.get("state_dict")
    if not isinstance(values, dict) or not isinstance(state, dict) or "name" not in values:
        raise _invalid(path, "the config or the state dict is missing or malformed")
    if values.get("arch") == "custom" and backbone is None:
        raise CheckpointError(f"scratchdet.load: {path} holds a detector around a user backbone "
                              f"({values.get('backbone') or 'an nn.Module'}); pass a new instance of it: "
                              "scratchdet.load(path, backbone=...)")
    try:
        config = SSDConfig.from_dict(values)
        model = SSD.from_config(config, backbone=backbone if config.arch == "custom" else None)
    except (TypeError, ValueError, UserError) as exc:
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
