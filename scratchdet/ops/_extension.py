"""Loads the compiled operator library ``scratchdet._C``.

When it is missing (not built, or built against another torch), every public op
falls back to :mod:`scratchdet.ops.reference` (see ``_registrations.py``) and one
warning says why: ``LOAD_ERROR``.
"""
from __future__ import annotations

import importlib

import torch

LOAD_ERROR: str | None = None


def _load() -> bool:
    global LOAD_ERROR
    try:
        importlib.import_module("scratchdet._C")
    except ImportError as exc:  # also covers undefined-symbol errors from a stale build
        LOAD_ERROR = str(exc)
        return False
    return hasattr(torch.ops.scratchdet, "_build_info")


EXTENSION_LOADED = _load()


def has_op(name: str) -> bool:
    """True when ``torch.ops.scratchdet.<name>`` exists in the loaded extension."""
    if not EXTENSION_LOADED:
        return False
    try:
        getattr(torch.ops.scratchdet, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def parse_build_info(text: str) -> dict[str, str]:
    """``"key=value;key=value"`` -> dict. A value may itself hold ``;`` (an arch list such as
    ``7.5;8.0;9.0+PTX``): a piece without ``=`` continues the previous value."""
    raw: dict[str, str] = {}
    key = None
    for piece in text.split(";"):
        if "=" in piece:
            key, value = piece.split("=", 1)
            raw[key] = value
        elif piece and key is not None:
            raw[key] += ";" + piece
    return raw


def build_info() -> dict:
    """What was compiled: extension loaded, CPU/CUDA kernels, CUDA arch list, versions."""
    info = {
        "extension_loaded": EXTENSION_LOADED,
        "cpu_kernels": False,
        "cuda_kernels": False,
        "cuda_arch_list": [],
        "torch_version_built": None,
        "cuda_version_built": None,
        "openmp": False,
        "torch_version_running": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "load_error": LOAD_ERROR,
    }
    if not EXTENSION_LOADED:
        return info
    raw = parse_build_info(torch.ops.scratchdet._build_info())
    info.update(
        cpu_kernels=raw.get("cpu") == "1",
        cuda_kernels=raw.get("cuda") == "1",
        cuda_arch_list=[a for a in raw.get("cuda_arch_list", "").replace(" ", ";").split(";") if a],
        torch_version_built=raw.get("torch_version") or None,
        cuda_version_built=raw.get("cuda_version") or None,
        openmp=raw.get("openmp") == "1",
    )
    return info
