"""Argument checks used by the reference ops, worded like the C++ TORCH_CHECKs."""
from __future__ import annotations

import torch


def check_floating(t: torch.Tensor, op: str, name: str) -> None:
    if not t.is_floating_point():
        raise RuntimeError(
            f"{op}: expected {name} to be a floating-point tensor "
            f"(float16, bfloat16, float32 or float64), got {t.dtype}")


def check_shape(t: torch.Tensor, dim: int, last: int | None, op: str, name: str, shape: str) -> None:
    if t.dim() != dim or (last is not None and t.shape[-1] != last):
        raise RuntimeError(f"{op}: expected {name} of shape {shape}, got shape {list(t.shape)}")


def check_same_device(a: torch.Tensor, b: torch.Tensor, op: str, name_a: str, name_b: str) -> None:
    if a.device != b.device:
        raise RuntimeError(
            f"{op}: expected {name_a} and {name_b} on the same device, got {a.device} and {b.device}")


def check_same_dtype(a: torch.Tensor, b: torch.Tensor, op: str, name_a: str, name_b: str) -> None:
    if a.dtype != b.dtype:
        raise RuntimeError(
            f"{op}: expected {name_a} and {name_b} to have the same dtype, got {a.dtype} and {b.dtype}")
