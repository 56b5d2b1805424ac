"""winograd_conv3x3 / winograd_f43_pack: the 3x3 stride-1 conv by Winograd F(4x4, 3x3), in tensor ops
(the CPU algorithm of the fused network's 3x3 stride-1 convs)."""
from __future__ import annotations

import torch
from torch._prims_common import suggest_memory_format

from .._checks import ANY_SIZE, check_bias_and_residual, check_same_device, check_same_dtype, check_shape

__all__ = ["WINOGRAD_F43", "check_winograd_conv3x3_args", "check_winograd_f43_pack_args", "winograd_f43_pack",
           "winograd_conv3x3"]


# Winograd F(4x4, 3x3) (Lavin & Gray 2016; points 0, +-1, +-2, inf): Y = A^T [(G g G^T) . (B^T d B)] A
WINOGRAD_F43 = {
    "BT": [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
           [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
    "G": [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
          [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
    "AT": [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
}


def _wino(name: str, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(WINOGRAD_F43[name], dtype=like.dtype, device=like.device)


def check_winograd_conv3x3_args(input, packed_weight, bias, residual) -> list:
    """Returns the output shape [N, C_out, H, W]."""
    op = "winograd_conv3x3"
    check_shape(input, 4, ANY_SIZE, op, "input", "[N, C_in, H, W]")
    check_shape(packed_weight, 3, ANY_SIZE, op, "packed_weight", "[36, C_in, C_out] (from winograd_f43_pack)")
    if input.dtype != torch.float32:
        raise RuntimeError(f"{op}: expected input of dtype float32, got {input.dtype} (the Winograd path is "
                           "float32-only; use conv_bn_act for other dtypes)")
    check_same_dtype(input, packed_weight, op, "input", "packed_weight")
    check_same_device(input, packed_weight, op, "input", "packed_weight")
    if packed_weight.shape[0] != 36 or packed_weight.shape[1] != input.shape[1]:
        raise RuntimeError(f"{op}: expected packed_weight of shape [36, C_in, C_out] with C_in = {input.shape[1]} "
                           f"(from winograd_f43_pack), got shape {list(packed_weight.shape)}")
    out_shape = [input.shape[0], packed_weight.shape[2], input.shape[2], input.shape[3]]
    check_bias_and_residual(input, bias, residual, out_shape, op)
    max_channels = (2**31 - 1) // 36  # the kernel hands channel counts to BLAS as 32-bit ints
    if input.shape[1] > max_channels or packed_weight.shape[2] > max_channels:
        raise RuntimeError(f"{op}: expected fewer than 2^31 / 36 channels (BLAS takes 32-bit sizes), "
                           f"got C_in = {input.shape[1]} and C_out = {packed_weight.shape[2]}")
    return out_shape


def check_winograd_f43_pack_args(weight) -> None:
    op = "winograd_f43_pack"
    check_shape(weight, 4, ANY_SIZE, op, "weight", "[C_out, C_in, 3, 3]")
    if weight.shape[2:] != (3, 3):
        raise RuntimeError(f"{op}: expected a 3x3 weight [C_out, C_in, 3, 3], got shape {list(weight.shape)}")
    if weight.dtype not in (torch.float32, torch.float64):
        raise RuntimeError(f"{op}: expected weight of dtype float32 or float64, got {weight.dtype}")


def winograd_f43_pack(weight: torch.Tensor) -> torch.Tensor:
    """``G g G^T`` of every 3x3 filter of ``weight [C_out, C_in, 3, 3]``, computed in float64:
    float32 ``[36, C_in, C_out]`` (transform position ``6*i + j`` first, as the GEMMs take it)."""
    check_winograd_f43_pack_args(weight)
    w = weight.double()
    g = _wino("G", w)
    u = torch.einsum("ak,oikl,bl->abio", g, w, g)            # [6, 6, C_in, C_out]
    return u.reshape(36, weight.shape[1], weight.shape[0]).float().contiguous()


def winograd_conv3x3(input: torch.Tensor, packed_weight: torch.Tensor, bias: torch.Tensor | None = None,
                     residual: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
    """``relu?(conv2d(input, weight, bias, stride=1, padding=1) + residual?)`` by Winograd F(4x4, 3x3)
    with ``packed_weight = winograd_f43_pack(weight)``, written out in tensor ops: 4x4 output
    tiles, 6x6 input tiles with zero padding past the edges. float32 in and out; it differs from
    ``conv2d`` by rounding only (about 1e-5 relative per layer). Output in the input's memory format."""
    check_winograd_conv3x3_args(input, packed_weight, bias, residual)
    n, c, h, w = input.shape
    c_out = packed_weight.shape[2]
    th, tw = -(-h // 4), -(-w // 4)
    x = torch.nn.functional.pad(input, (1, 1 + 4 * tw - w, 1, 1 + 4 * th - h))   # [N, C, 4*th+2, 4*tw+2]
    tiles = x.unfold(2, 6, 4).unfold(3, 6, 4)                                      # [N, C, th, tw, 6, 6]
    bt, at = _wino("BT", input), _wino("AT", input)
    v = torch.einsum("ak,ncyxkl,bl->abnyxc", bt, tiles, bt).reshape(36, -1, c)    # [36, tiles, C]
    m = torch.bmm(v, packed_weight).reshape(6, 6, n, th, tw, c_out)                # [6, 6, N, th, tw, C_out]
    y = torch.einsum("ia,abnyxo,jb->noyixj", at, m, at).reshape(n, c_out, 4 * th, 4 * tw)[:, :, :h, :w]
    if bias is not None:
        y = y + bias.view(1, -1, 1, 1)
    if residual is not None:
        y = y + residual
    if relu:
        y = torch.relu(y)
    return y.contiguous(memory_format=suggest_memory_format(input))
