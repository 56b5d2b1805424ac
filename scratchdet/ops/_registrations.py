"""Where the Python side meets torch.library: the fake kernels of every op, and the callables the
public functions in ``scratchdet.ops.<op>`` use.

- Fake (meta) kernels let ``torch.compile`` / ``torch.export`` trace the ops without running
  them. Each one first calls the reference's argument check, so a bad input is refused at trace
  time with the message the compiled op (C++ TORCH_CHECK) and the reference raise.
- ``box_iou``, ``match_priors``, ... here are ``torch.ops.scratchdet.<op>`` when the extension has
  the op, else a fallback that warns once and runs ``scratchdet.ops.reference.<op>``.
"""
from __future__ import annotations

import functools
import warnings

import torch
from torch._prims_common import suggest_memory_format

from . import reference
from ._extension import LOAD_ERROR, has_op

_warned = False


def _warn_fallback(op_name: str) -> None:
    """One warning per process, the first time an op runs on the reference path."""
    global _warned
    if _warned:
        return
    _warned = True
    why = LOAD_ERROR or f"the loaded extension has no op '{op_name}' (stale build?)"
    warnings.warn(
        "scratchdet: the compiled extension scratchdet._C is not available "
        f"({why}); falling back to the slow pure-PyTorch reference ops. "
        "Reinstall with `pip install --no-build-isolation -e .` to build it.",
        RuntimeWarning,
        stacklevel=4,  # the caller of the public function
    )


def _compiled_or_reference(name: str):
    """``torch.ops.scratchdet.<name>`` when compiled, else ``reference.<name>`` behind a one-time warning."""
    if has_op(name):
        return getattr(torch.ops.scratchdet, name)
    run_reference = getattr(reference, name)

    @functools.wraps(run_reference)
    def fallback(*args):
        _warn_fallback(name)
        return run_reference(*args)

    return fallback


def _fake(name: str):
    """Registers the decorated function as the fake kernel of scratchdet::<name> (when compiled)."""
    def register(fake):
        if has_op(name):
            torch.library.register_fake(f"scratchdet::{name}")(fake)
        return fake
    return register


# --------------------------------------------------------------------------- fake kernels
def _float_dtype(*tensors) -> torch.dtype:
    """The dtype the box ops compute and return in: float32, or float64 if an input is."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


@_fake("box_iou")
def _box_iou_fake(boxes1, boxes2):
    reference.check_box_iou_args(boxes1, boxes2)
    return boxes1.new_empty((boxes1.shape[0], boxes2.shape[0]))


@_fake("match_priors")
def _match_priors_fake(priors, gt_boxes, gt_labels, iou_threshold=0.5, variances=(0.1, 0.2)):
    reference.check_match_priors_args(priors, gt_boxes, gt_labels, iou_threshold, variances)
    dtype = _float_dtype(priors, gt_boxes)
    B, P = gt_boxes.shape[0], priors.shape[0]
    return (priors.new_empty((B, P, 4), dtype=dtype), gt_labels.new_empty((B, P)),
            priors.new_empty((B, P), dtype=dtype))


@_fake("batched_nms")
def _batched_nms_fake(boxes, scores, idxs, iou_threshold):
    reference.check_batched_nms_args(boxes, scores, idxs, iou_threshold)
    num_kept = torch.library.get_ctx().new_dynamic_size()  # how many boxes survive depends on the data
    return boxes.new_empty((num_kept,), dtype=torch.int64)


@_fake("detect")
def _detect_fake(loc, logits, priors, variances=(0.1, 0.2), score_threshold=0.01, nms_threshold=0.45, top_k=400,
                 keep_top_k=200, clip=True):
    reference.check_detect_args(loc, logits, priors, variances, score_threshold, nms_threshold, top_k, keep_top_k)
    dtype = _float_dtype(loc, priors)
    B, K = loc.shape[0], keep_top_k
    return (loc.new_empty((B, K, 4), dtype=dtype), loc.new_empty((B, K), dtype=dtype),
            loc.new_empty((B, K), dtype=torch.int64), loc.new_empty((B,), dtype=torch.int64))


@_fake("conv_bn_act")
def _conv_bn_act_fake(input, weight, bias, residual, stride, padding, dilation, groups, relu):
    shape = reference.check_conv_bn_act_args(input, weight, bias, residual, stride, padding, dilation, groups)
    return input.new_empty(shape).contiguous(memory_format=suggest_memory_format(input))


@_fake("winograd_conv3x3")
def _winograd_conv3x3_fake(input, packed_weight, bias, residual, relu):
    shape = reference.check_winograd_conv3x3_args(input, packed_weight, bias, residual)
    return input.new_empty(shape).contiguous(memory_format=suggest_memory_format(input))


@_fake("winograd_f43_pack")
def _winograd_f43_pack_fake(weight):
    reference.check_winograd_f43_pack_args(weight)
    return weight.new_empty(36, weight.shape[1], weight.shape[0], dtype=torch.float32)


@_fake("winograd_f63_pack")
def _winograd_f63_pack_fake(weight):
    reference.check_winograd_f63_pack_args(weight)
    return weight.new_empty(64, weight.shape[1], weight.shape[0], dtype=torch.float32)


@_fake("batch_norm_relu")
def _batch_norm_relu_fake(input, weight, bias, residual, eps, relu):
    reference.check_batch_norm_relu_args(input, weight, bias, residual, eps)
    stat_dtype = torch.promote_types(input.dtype, torch.float32)
    c = input.shape[1]
    return (torch.empty_like(input, memory_format=suggest_memory_format(input)),
            input.new_empty((c,), dtype=stat_dtype), input.new_empty((c,), dtype=stat_dtype))


@_fake("batch_norm_relu_backward")
def _batch_norm_relu_backward_fake(grad_out, out, input, weight, save_mean, save_invstd, relu, residual):
    reference.check_batch_norm_relu_backward_args(grad_out, out, input, weight, save_mean, save_invstd)
    fmt = suggest_memory_format(input)
    param_dtype = weight.dtype if weight is not None else save_mean.dtype
    c = input.shape[1]
    return (torch.empty_like(input, memory_format=fmt), input.new_empty((c,), dtype=param_dtype),
            input.new_empty((c,), dtype=param_dtype),
            torch.empty_like(input, memory_format=fmt) if residual else input.new_empty((0,)))


def _batch_norm_relu_setup(ctx, inputs, output):
    input, weight, bias, residual, eps, relu = inputs
    out, save_mean, save_invstd = output
    ctx.save_for_backward(out, input, weight, save_mean, save_invstd)
    ctx.relu, ctx.has_residual = relu, residual is not None
    ctx.has_weight, ctx.has_bias = weight is not None, bias is not None


def _batch_norm_relu_autograd(ctx, grad_out, _grad_mean, _grad_invstd):
    out, input, weight, save_mean, save_invstd = ctx.saved_tensors
    dx, dw, db, dr = torch.ops.scratchdet.batch_norm_relu_backward(
        grad_out, out, input, weight, save_mean, save_invstd, ctx.relu, ctx.has_residual)
    return (dx, dw if ctx.has_weight else None, db if ctx.has_bias else None, dr if ctx.has_residual else None,
            None, None)


if has_op("batch_norm_relu"):
    # the gradient of the forward op is the backward op (save_mean / save_invstd get none)
    torch.library.register_autograd("scratchdet::batch_norm_relu", _batch_norm_relu_autograd,
                                    setup_context=_batch_norm_relu_setup)


# --------------------------------------------------------------------------- what the public functions call
box_iou = _compiled_or_reference("box_iou")
match_priors = _compiled_or_reference("match_priors")
batched_nms = _compiled_or_reference("batched_nms")
detect = _compiled_or_reference("detect")
conv_bn_act = _compiled_or_reference("conv_bn_act")
winograd_conv3x3 = _compiled_or_reference("winograd_conv3x3")
winograd_f43_pack = _compiled_or_reference("winograd_f43_pack")
winograd_f63_pack = _compiled_or_reference("winograd_f63_pack")
batch_norm_relu = _compiled_or_reference("batch_norm_relu")              # the reference is differentiable itself
batch_norm_relu_backward = _compiled_or_reference("batch_norm_relu_backward")

