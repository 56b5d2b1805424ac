"""Max-pooling of uint8 channels_last tensors, which torch's CPU max-pool refuses.

The int8 predictor passes a conv's uint8 output through the stem's max-pool (pooling commutes
with the monotonic quantisation). Converting to the contiguous layout for torch's uint8 pool and
back cost ~20 ms at 64 x 300 x 300 (two layout copies and a scalar pool); this separable form,
``max`` over the kernel's column offsets and then over its row offsets on strided views, stays
channels_last (the channels are the vector lanes) and takes ~0.5 ms on the same tensor. Exact:
max is exact, and padding with 0 is padding with -inf, since 0 is the uint8 minimum.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["max_pool2d_uint8"]


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        if len(v) == 1:
            return int(v[0]), int(v[0])
        return int(v[0]), int(v[1])
    return int(v), int(v)


def _out_size(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    span = size + 2 * p - d * (k - 1) - 1
    out = (math.ceil(span / s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:     # torch's rule: the last window starts inside
        out -= 1
    return out


def _max_over_offsets(x: torch.Tensor, dim: int, out_len: int, k: int, s: int, d: int) -> torch.Tensor:
    def window(i: int) -> torch.Tensor:
        return x.narrow(dim, i * d, s * (out_len - 1) + 1)[(slice(None),) * dim + (slice(None, None, s),)]

    out = window(0).clone(memory_format=torch.channels_last)     # never a view: written in place below
    for i in range(1, k):
        torch.maximum(out, window(i), out=out)
    return out


def max_pool2d_uint8(x: torch.Tensor, kernel_size, stride=None, padding=0, dilation=1,
                     ceil_mode: bool = False) -> torch.Tensor:
    """``F.max_pool2d`` for a 4-d uint8 tensor, result channels_last, equal to torch's on the contiguous
    layout for every kernel, stride, padding, dilation and ceil_mode torch accepts."""
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ValueError(f"max_pool2d_uint8 takes a 4-d uint8 tensor, got {x.dim()}-d {x.dtype}")
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(stride) if stride is not None and stride != [] and stride != () else (kh, kw)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    if min(kh, kw, sh, sw, dh, dw) < 1 or ph < 0 or pw < 0 or 2 * ph > kh or 2 * pw > kw:
        raise ValueError(f"max_pool2d_uint8: bad pooling kernel {kh}x{kw}, stride {sh}x{sw}, padding {ph}x{pw}, "
                         f"dilation {dh}x{dw} (padding must be at most half the kernel)")
    _, _, h, w = x.shape
    oh, ow = _out_size(h, kh, sh, ph, dh, ceil_mode), _out_size(w, kw, sw, pw, dw, ceil_mode)
    if oh < 1 or ow < 1:
        raise ValueError(f"max_pool2d_uint8: a {h}x{w} input is smaller than the {kh}x{kw} pooling window")
    right = max(0, (ow - 1) * sw + dw * (kw - 1) + 1 - (w + 2 * pw))
    bottom = max(0, (oh - 1) * sh + dh * (kh - 1) + 1 - (h + 2 * ph))
    if ph or pw or right or bottom:
        x = F.pad(x, (pw, pw + right, ph, ph + bottom))             # 0: the uint8 minimum
    rows = _max_over_offsets(x, 3, ow, kw, sw, dw)
    return _max_over_offsets(rows, 2, oh, kh, sh, dh)
