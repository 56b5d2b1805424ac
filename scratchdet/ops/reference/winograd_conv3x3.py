"""winograd_conv3x3 / winograd_f43_pack / winograd_f63_pack: the 3x3 stride-1 conv by Winograd F(4x4, 3x3)
or F(6x6, 3x3), in tensor ops (the CPU algorithm of the fused network's 3x3 stride-1 convs)."""
from __future__ import annotations

import torch
from torch._prims_common import suggest_memory_format

from .._checks import ANY_SIZE, check_bias_and_residual, check_same_device, check_same_dtype, check_shape

__all__ = ["WINOGRAD_F43", "WINOGRAD_F63", "check_winograd_conv3x3_args", "check_winograd_f43_pack_args",
           "check_winograd_f63_pack_args", "winograd_f43_pack", "winograd_f63_pack", "winograd_conv3x3"]


# Winograd F(4x4, 3x3) (Lavin & Gray 2016; points 0, +-1, +-2, inf): Y = A^T [(G g G^T) . (B^T d B)] A
WINOGRAD_F43 = {
    "BT": [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
           [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
    "G": [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
          [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
    "AT": [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
}

# Winograd F(6x6, 3x3) (points 0, 1, -1, 1/2, -1/2, 2, -2, inf, in the order of the rows)
WINOGRAD_F63 = {
    "BT": [[1, 0, -21 / 4, 0, 21 / 4, 0, -1, 0], [0, 1, 1, -17 / 4, -17 / 4, 1, 1, 0],
           [0, -1, 1, 17 / 4, -17 / 4, -1, 1, 0], [0, 2, 4, -5 / 2, -5, 1 / 2, 1, 0],
           [0, -2, 4, 5 / 2, -5, -1 / 2, 1, 0], [0, 1 / 2, 1 / 4, -5 / 2, -5 / 4, 2, 1, 0],
           [0, -1 / 2, 1 / 4, 5 / 2, -5 / 4, -2, 1, 0], [0, -1, 0, 21 / 4, 0, -21 / 4, 0, 1]],
    "G": [[1, 0, 0], [-2 / 9, -2 / 9, -2 / 9], [-2 / 9, 2 / 9, -2 / 9], [32 / 45, 16 / 45, 8 / 45],
          [32 / 45, -16 / 45, 8 / 45], [1 / 90, 2 / 90, 4 / 90], [1 / 90, -2 / 90, 4 / 90], [0, 0, 1]],
    "AT": [[1, 1, 1, 1, 1, 1, 1, 0], [0, 1, -1, 1 / 2, -1 / 2, 2, -2, 0], [0, 1, 1, 1 / 4, 1 / 4, 4, 4, 0],
           [0, 1, -1, 1 / 8, -1 / 8, 8, -8, 0], [0, 1, 1, 1 / 16, 1 / 16, 16, 16, 0],
           [0, 1, -1, 1 / 32, -1 / 32, 32, -32, 1]],
}

# transform positions P of the packed weight -> the matrices of that tile size
_BY_POSITIONS = {36: WINOGRAD_F43, 64: WINOGRAD_F63}


def _wino(matrices: dict, name: str, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(matrices[name], dtype=like.dtype, device=like.device)


def check_winograd_conv3x3_args(input, packed_weight, bias, residual) -> list:
    """Returns the output shape [N, C_out, H, W]."""
    op = "winograd_conv3x3"
    check_shape(input, 4, ANY_SIZE, op, "input", "[N, C_in, H, W]")
    check_shape(packed_weight, 3, ANY_SIZE, op, "packed_weight",
                "[36 or 64, C_in, C_out] (from winograd_f43_pack or winograd_f63_pack)")
    if input.dtype != torch.float32:
        raise RuntimeError(f"{op}: expected input of dtype float32, got {input.dtype} (the Winograd path is "
                           "float32-only; use conv_bn_act for other dtypes)")
    check_same_dtype(input, packed_weight, op, "input", "packed_weight")
    check_same_device(input, packed_weight, op, "input", "packed_weight")
    if packed_weight.shape[0] not in _BY_POSITIONS or packed_weight.shape[1] != input.shape[1]:
        raise RuntimeError(f"{op}: expected packed_weight of shape [36 or 64, C_in, C_out] with C_in = "
                           f"{input.shape[1]} (from winograd_f43_pack or winograd_f63_pack), "
                           f"got shape {list(packed_weight.shape)}")
    out_shape = [input.shape[0], packed_weight.shape[2], input.shape[2], input.shape[3]]
    check_bias_and_residual(input, bias, residual, out_shape, op)
    max_channels = (2**31 - 1) // 64  # the kernel hands channel counts to BLAS as 32-bit ints
    if input.shape[1] > max_channels or packed_weight.shape[2] > max_channels:
        raise RuntimeError(f"{op}: expected fewer than 2^31 / 64 channels (BLAS takes 32-bit sizes), "
                           f"got C_in = {input.shape[1]} and C_out = {packed_weight.shape[2]}")
    return out_shape


def check_winograd_f43_pack_args(weight) -> None:
    _check_pack_args(weight, "winograd_f43_pack")


def check_winograd_f63_pack_args(weight) -> None:
    _check_pack_args(weight, "winograd_f63_pack")


def _check_pack_args(weight, op: str) -> None:
    check_shape(weight, 4, ANY_SIZE, op, "weight", "[C_out, C_in, 3, 3]")
    if weight.shape[2:] != (3, 3):
        raise RuntimeError(f"{op}: expected a 3x3 weight [C_out, C_in, 3, 3], got shape {list(weight.shape)}")
    if weight.dtype not in (torch.float32, torch.float64):
        raise RuntimeError(f"{op}: expected weight of dtype float32 or float64, got {weight.dtype}")


def _pack(weight: torch.Tensor, matrices: dict) -> torch.Tensor:
    w = weight.double()
    g = _wino(matrices, "G", w)
    u = torch.einsum("ak,oikl,bl->abio", g, w, g)            # [t, t, C_in, C_out]
    return u.reshape(-1, weight.shape[1], weight.shape[0]).float().contiguous()


def winograd_f43_pack(weight: torch.Tensor) -> torch.Tensor:
    """``G g G^T`` of every 3x3 filter of ``weight [C_out, C_in, 3, 3]``, computed in float64:
    float32 ``[36, C_in, C_out]`` (transform position ``6*i + j`` first, as the GEMMs take it)."""
    check_winograd_f43_pack_args(weight)
    return _pack(weight, WINOGRAD_F43)


def winograd_f63_pack(weight: torch.Tensor) -> torch.Tensor:
    """The F(6x6, 3x3) transform of every filter, computed in float64: float32 ``[64, C_in, C_out]``
    (transform position ``8*i + j`` first)."""
    check_winograd_f63_pack_args(weight)
    return _pack(weight, WINOGRAD_F63)


def winograd_conv3x3(input: torch.Tensor, packed_weight: torch.Tensor, bias: torch.Tensor | None = None,
                     residual: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
    """``relu?(conv2d(input, weight, bias, stride=1, padding=1) + residual?)`` by Winograd F(4x4, 3x3)
    with ``packed_weight = winograd_f43_pack(weight)`` ([36, ...]) or F(6x6, 3x3) with
    ``winograd_f63_pack(weight)`` ([64, ...]), written out in tensor ops: m x m output tiles
    (m = 4 or 6), (m+2) x (m+2) input tiles with zero padding past the edges. float32 in and out; it
    differs from ``conv2d`` by rounding only (about 1e-5 relative per layer). Output in the input's
    memory format."""
    check_winograd_conv3x3_args(input, packed_weight, bias, residual)
    matrices = _BY_POSITIONS[packed_weight.shape[0]]
    bt, at = _wino(matrices, "BT", input), _wino(matrices, "AT", input)
    t, m = bt.shape[0], at.shape[0]
    n, c, h, w = input.shape
    c_out = packed_weight.shape[2]
    th, tw = -(-h // m), -(-w // m)
    x = torch.nn.functional.pad(input, (1, 1 + m * tw - w, 1, 1 + m * th - h))   # [N, C, m*th+2, m*tw+2]
    tiles = x.unfold(2, t, m).unfold(3, t, m)                                      # [N, C, th, tw, t, t]
    v = torch.einsum("ak,ncyxkl,bl->abnyxc", bt, tiles, bt).reshape(t * t, -1, c)  # [P, tiles, C]
    prod = torch.bmm(v, packed_weight).reshape(t, t, n, th, tw, c_out)            # [t, t, N, th, tw, C_out]
    y = torch.einsum("ia,abnyxo,jb->noyixj", at, prod, at).reshape(n, c_out, m * th, m * tw)[:, :, :h, :w]
    if bias is not None:
        y = y + bias.view(1, -1, 1, 1)
    if residual is not None:
        y = y + residual
    if relu:
        y = torch.relu(y)
    return y.contiguous(memory_format=suggest_memory_format(input))
