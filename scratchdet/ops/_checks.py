"""Argument checks shared by the reference ops and the fake kernels, worded exactly like the C++
TORCH_CHECKs of csrc/ops/common/checks.h: the compiled op, the reference and the fake kernel
refuse the same input with the same message.

They read only metadata (shapes, dtypes, devices, Python scalars), so they run on FakeTensors.
Numbers are formatted as C++ streams them: floats with ``%g`` (``0.1``, ``nan``), lists as ``[a, b]``.
"""
from __future__ import annotations

import torch

ANY_SIZE = None  # check_shape's last_dim when any size is fine (C++: kAnySize)


def fmt_float(x) -> str:
    """A float as C++'s ``std::ostream << double`` writes it."""
    return f"{float(x):g}"


def fmt_floats(values) -> str:
    """A list of floats as C++ writes a ``c10::ArrayRef<double>``."""
    return "[" + ", ".join(fmt_float(v) for v in values) + "]"


def check_floating(t: torch.Tensor, op: str, name: str) -> None:
    if not t.is_floating_point():
        raise RuntimeError(
            f"{op}: expected {name} to be a floating-point tensor "
            f"(float16, bfloat16, float32 or float64), got {t.dtype}")


def check_shape(t: torch.Tensor, dim: int, last_dim: int | None, op: str, name: str, shape: str) -> None:
    """``t.dim() == dim`` and, unless last_dim is ANY_SIZE, ``t.shape[-1] == last_dim``."""
    if t.dim() != dim or (last_dim is not ANY_SIZE and t.shape[-1] != last_dim):
        raise RuntimeError(f"{op}: expected {name} of shape {shape}, got shape {list(t.shape)}")


def check_same_device(a: torch.Tensor, b: torch.Tensor, op: str, name_a: str, name_b: str) -> None:
    if a.device != b.device:
        raise RuntimeError(
            f"{op}: expected {name_a} and {name_b} on the same device, got {a.device} and {b.device}")


def check_same_dtype(a: torch.Tensor, b: torch.Tensor, op: str, name_a: str, name_b: str) -> None:
    if a.dtype != b.dtype:
        raise RuntimeError(
            f"{op}: expected {name_a} and {name_b} to have the same dtype, got {a.dtype} and {b.dtype}")


def check_bias_and_residual(input, bias, residual, out_shape: list, op: str) -> None:
    """The conv ops' epilogue operands: bias [C_out], residual of the output's shape, both like input."""
    if bias is not None:
        if bias.dim() != 1 or bias.shape[0] != out_shape[1]:
            raise RuntimeError(f"{op}: expected bias of shape [{out_shape[1]}], got shape {list(bias.shape)}")
        check_same_dtype(input, bias, op, "input", "bias")
        check_same_device(input, bias, op, "input", "bias")
    if residual is not None:
        if list(residual.shape) != list(out_shape):
            raise RuntimeError(f"{op}: expected residual of the output's shape {list(out_shape)}, "
                               f"got shape {list(residual.shape)}")
        check_same_dtype(input, residual, op, "input", "residual")
        check_same_device(input, residual, op, "input", "residual")
