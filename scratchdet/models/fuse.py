"""Fused Conv-BN inference, the folding pass: ``fuse(model)`` folds every BatchNorm into its conv
(:func:`fold_batch_norm`).

Every ``ConvNormAct`` becomes a :class:`~scratchdet.models.fused_layers.FusedConvAct` (one
``conv_bn_act`` call: conv + bias + ReLU) and every ``BasicBlock`` a
:class:`~scratchdet.models.fused_layers.FusedBasicBlock`, whose
second conv also does the residual add and the ReLU after it, in the same call.

Any other backbone (timm, a user's module): every BatchNorm whose input is the output of a
conv is found by tracing one forward pass (an SSD's own input size, or ``example_input``) and
folded into that conv; a plain zero-padded ``nn.Conv2d`` then becomes a :class:`FusedConvAct`
(with the ReLU too when the BatchNorm carried one), another conv class keeps its class with the
folded weights. The fused model's output is checked against the original on that input.

Which kernel a fused conv runs on (the op, Winograd, prepacked oneDNN) is decided in
:mod:`scratchdet.models.conv_backends`; :class:`FastPredictor` switches the fast ones on.

Unfusable patterns (a GroupNorm, a BatchNorm without running statistics or with no conv
before it, a conv that is not zero-padded) are left as they are: they are listed in
``fused.fuse_report.unfused`` and one ``UserWarning`` names them. The fused model is
inference-only.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn as nn

# FusedConvAct and FusedBasicBlock lived here: models pickled whole before the split name them
# scratchdet.models.fuse.<class>, and unpickling looks them up in this module.
from .fused_layers import FusedBasicBlock, FusedConvAct
from .layers import BasicBlock, Bias2d, BNReLU2d, ConvNormAct

__all__ = ["fuse", "fold_batch_norm", "fused_conv", "FuseReport"]


_PLAIN_BATCH_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm, BNReLU2d)   # eval mode: plain BatchNorm


def fold_batch_norm(weight: torch.Tensor, bias: torch.Tensor | None, running_mean: torch.Tensor,
                    running_var: torch.Tensor, gamma: torch.Tensor | None, beta: torch.Tensor | None,
                    eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm into the conv before it: ``w' = w*g/sqrt(var+eps)`` and
    ``b' = (b - mu)*g/sqrt(var+eps) + beta``. Computed in float64, returned in weight's dtype."""
    dtype = weight.dtype
    var, mean = running_var.double(), running_mean.double()
    g = gamma.double() if gamma is not None else torch.ones_like(var)
    bt = beta.double() if beta is not None else torch.zeros_like(var)
    b = bias.double() if bias is not None else torch.zeros_like(var)
    scale = g / torch.sqrt(var + eps)
    w = weight.double() * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    return w.to(dtype), ((b - mean) * scale + bt).to(dtype)


def _folded(conv: nn.Conv2d, norm: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of ``conv`` followed by ``norm``: an eval-mode BatchNorm, a Bias2d or None."""
    if norm is None:
        return conv.weight, conv.bias
    if isinstance(norm, Bias2d):
        bias = norm.bias if conv.bias is None else conv.bias + norm.bias
        return conv.weight, bias
    return fold_batch_norm(conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                           norm.eps)


def fused_conv(conv: nn.Conv2d, norm: nn.Module | None = None, relu: bool = False) -> FusedConvAct:
    """``conv`` with the eval-mode BatchNorm (or Bias2d) ``norm`` after it, or None, folded in."""
    weight, bias = _folded(conv, norm)
    return FusedConvAct(weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups, relu)


def _fused_conv_norm_act(block: ConvNormAct, relu: bool | None = None) -> FusedConvAct:
    return fused_conv(block.conv, block.norm, block.act if relu is None else relu)


def _fused_basic_block(block: BasicBlock) -> FusedBasicBlock:
    shortcut = None if block.shortcut is None else _fused_conv_norm_act(block.shortcut)
    return FusedBasicBlock(_fused_conv_norm_act(block.conv1),
                           _fused_conv_norm_act(block.conv2, relu=True),   # the ReLU after the add
                           shortcut)


@dataclass
class FuseReport:
    """What :func:`fuse` did: qualified module names, and ``(name, reason)`` for what it left alone."""
    fused: list[str] = field(default_factory=list)
    unfused: list[tuple[str, str]] = field(default_factory=list)
    folded_batch_norms: int = 0


def _why_conv_unfusable(conv: nn.Module) -> str | None:
    if type(conv) is not nn.Conv2d:
        return f"conv is {type(conv).__name__}, not nn.Conv2d"
    if conv.padding_mode != "zeros":
        return f"conv has padding_mode={conv.padding_mode!r} (only 'zeros' is fused)"
    if isinstance(conv.padding, str):
        return f"conv has padding={conv.padding!r} (only explicit padding is fused)"
    return None


def _why_norm_unfusable(norm: nn.Module) -> str | None:
    if isinstance(norm, nn.GroupNorm):
        return "GroupNorm normalises with each image's own statistics: there is nothing to fold"
    if not isinstance(norm, nn.modules.batchnorm._BatchNorm):
        return f"norm is {type(norm).__name__}, not a BatchNorm"
    if norm.running_mean is None or norm.running_var is None:
        return "its BatchNorm has no running statistics (track_running_stats=False)"
    return None


def _why_unfusable(block: ConvNormAct) -> str | None:
    reason = _why_conv_unfusable(block.conv)
    if reason is None and block.norm is not None:
        reason = _why_norm_unfusable(block.norm)
        if reason is None and type(block.norm) not in _PLAIN_BATCH_NORMS:
            reason = f"norm is {type(block.norm).__name__}, a BatchNorm subclass with its own forward"
    return reason


def _is_batch_norm(module: nn.Module | None) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def _fuse_children(module: nn.Module, prefix: str, report: FuseReport, loose: list) -> None:
    """The structured pass: ConvNormAct and BasicBlock modules; other norms are collected in ``loose``."""
    for name, child in module.named_children():
        qual = f"{prefix}{name}"
        if isinstance(child, BasicBlock):
            parts = [child.conv1, child.conv2] + ([child.shortcut] if child.shortcut is not None else [])
            reasons = [r for r in map(_why_unfusable, parts) if r]
            if not reasons and type(child).forward is BasicBlock.forward:
                setattr(module, name, _fused_basic_block(child))
                report.fused.append(qual)
                report.folded_batch_norms += sum(_is_batch_norm(p.norm) for p in parts)
                continue
            if type(child).forward is not BasicBlock.forward:
                reasons.append(f"{type(child).__name__} overrides BasicBlock.forward")
            report.unfused.append((qual, "; ".join(dict.fromkeys(reasons))))
            # fall through: its ConvNormActs may still be fusable one by one
        elif isinstance(child, ConvNormAct):
            reason = _why_unfusable(child)
            if reason is None and type(child).forward is ConvNormAct.forward:
                setattr(module, name, _fused_conv_norm_act(child))
                report.fused.append(qual)
                report.folded_batch_norms += _is_batch_norm(child.norm)
            else:
                report.unfused.append((qual, reason or f"{type(child).__name__} overrides ConvNormAct.forward"))
            continue
        elif _is_batch_norm(child) or isinstance(child, (nn.GroupNorm, Bias2d)):
            loose.append((qual, child))
            continue
        _fuse_children(child, qual + ".", report, loose)


def _run(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    out = model.forward_raw(x) if hasattr(model, "forward_raw") else model(x)
    if isinstance(out, dict):
        out = list(out.values())
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _trace_conv_inputs(model: nn.Module, x: torch.Tensor, norms: list) -> dict:
    """norm name -> (conv name, conv) for each norm whose input is the output of a conv that runs
    once, in one forward pass (forward hooks; nothing else is changed)."""
    names = {m: n for n, m in model.named_modules()}
    produced, calls, inputs, keep = {}, {}, {}, []
    wanted = {id(m) for _, m in norms}

    def on_conv(mod, args, out):
        calls[mod] = calls.get(mod, 0) + 1
        produced[id(out)] = mod
        keep.append(out)                 # keep the tensor alive, so its id is not reused

    def on_norm(mod, args, out):
        calls[mod] = calls.get(mod, 0) + 1
        inputs[mod] = args[0] if args else None

    hooks = [m.register_forward_hook(on_conv) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_hook(on_norm) for m in model.modules() if id(m) in wanted]
    try:
        _run(model, x)
    finally:
        for h in hooks:
            h.remove()
    pairs = {}
    for name, norm in norms:
        conv = produced.get(id(inputs.get(norm)))
        if conv is not None and calls.get(conv) == 1 and calls.get(norm) == 1:
            pairs[name] = (names[conv], conv)
    return pairs


def _set(model: nn.Module, name: str, value: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, value)


def _fuse_traced(model: nn.Module, loose: list, example: torch.Tensor | None, report: FuseReport) -> None:
    """The generic pass: fold each loose BatchNorm (or Bias2d) into the conv whose output it takes."""
    foldable = []
    for name, norm in loose:
        reason = None if isinstance(norm, Bias2d) else _why_norm_unfusable(norm)
        if reason is None and example is None:
            reason = ("BatchNorm outside a ConvNormAct, and no example input to trace which conv feeds it: "
                      "call fuse(model, example_input=...)")
        if reason is None and not (type(norm) in _PLAIN_BATCH_NORMS or isinstance(norm, Bias2d)
                                   or _norm_act_parts(norm) is not None):
            reason = f"{type(norm).__name__} is a BatchNorm subclass with a forward of its own"
        if reason:
            report.unfused.append((name, reason))
        else:
            foldable.append((name, norm))
    if not foldable:
        return
    pairs = _trace_conv_inputs(model, example, foldable)
    for name, norm in foldable:
        if name not in pairs:
            report.unfused.append((name, "BatchNorm outside a ConvNormAct whose input is not the output of a "
                                         "conv run once (no conv to fold it into)"))
            continue
        conv_name, conv = pairs[name]
        drop, act = _norm_act_parts(norm) or (None, None)
        relu = type(act) is nn.ReLU and (drop is None or isinstance(drop, nn.Identity))
        if _why_conv_unfusable(conv) is None:
            _set(model, conv_name, fused_conv(conv, norm, relu))
        else:   # another conv class (e.g. timm's Conv2dSame): the folded weights in place, its own forward
            weight, bias = _folded(conv, norm)
            conv.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
            conv.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
            relu = False
        rest = [m for m in (drop, None if relu else act) if m is not None and not isinstance(m, nn.Identity)]
        _set(model, name, nn.Sequential(*rest) if rest else nn.Identity())
        report.fused.append(f"{conv_name}+{name}")
        report.folded_batch_norms += not isinstance(norm, Bias2d)


def _norm_act_parts(norm: nn.Module):
    """timm's BatchNormAct2d (a BatchNorm, then ``drop``, then ``act``): its (drop, act), else None."""
    drop, act = getattr(norm, "drop", None), getattr(norm, "act", None)
    if _is_batch_norm(norm) and isinstance(drop, nn.Module) and isinstance(act, nn.Module):
        return drop, act
    return None


def _example_input(model: nn.Module, example_input):
    if example_input is not None:
        return example_input
    size = getattr(model, "input_size", None)
    if size is None:
        return None
    p = next(model.parameters())
    return torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0)).to(p.device, p.dtype)


@torch.no_grad()
def fuse(model: nn.Module, example_input: torch.Tensor | None = None) -> nn.Module:
    """A deep copy of ``model`` (in eval mode) with BatchNorm folded and conv + bias (+ residual)
    + ReLU run by :func:`scratchdet.ops.conv_bn_act`.

    ``example_input`` (default for an SSD: one image of its input size) is what the generic pass
    traces to find which conv feeds a BatchNorm outside a ``ConvNormAct`` (timm, user modules).

    - ``model`` itself is not modified; a model in training mode is refused.
    - The copy keeps the model's API (an SSD keeps ``forward_raw``, ``forward``,
      ``predict``) and is inference-only: ``fused.train()`` raises.
    - ``fused.fuse_report`` (:class:`FuseReport`) lists what was fused and what
      was left unfused, with why; unfused parts also raise one ``UserWarning``.
    - fp32 outputs equal the unfused model's within 1e-4 relative.
    """
    training = [name or "<root>" for name, m in model.named_modules() if m.training]
    if training:
        raise RuntimeError(
            "fuse: the model is in training mode (modules " + ", ".join(training[:3]) +
            (", ..." if len(training) > 3 else "") + "); call model.eval() first: folding uses BatchNorm's "
            "running statistics, which training mode would not use")
    fused = copy.deepcopy(model)
    report = FuseReport()
    loose: list = []
    if isinstance(fused, (ConvNormAct, BasicBlock)):  # a bare block: wrap so the loop can replace it
        holder = nn.Module()
        holder.add_module("block", fused)
        _fuse_children(holder, "", report, loose)
        fused = holder.block
    else:
        _fuse_children(fused, "", report, loose)
    if loose:
        example = _example_input(model, example_input)
        structured = copy.deepcopy(fused) if example is not None else None
        n_fused, n_unfused, n_folded = len(report.fused), len(report.unfused), report.folded_batch_norms
        _fuse_traced(fused, loose, example, report)
        if example is not None and len(report.fused) > n_fused:
            want, got = _run(model, example), _run(fused, example)
            err = max(float((g - w).abs().max() / w.abs().max().clamp(min=1e-12)) for g, w in zip(got, want))
            if err > 1e-4:   # a conv output used elsewhere too: keep those BatchNorms as they were
                traced = report.fused[n_fused:]
                del report.fused[n_fused:]
                report.unfused[n_unfused:] = report.unfused[n_unfused:] + [
                    (pair.split("+")[-1], f"folding into {pair.split('+')[0]} changed the output (rel. error "
                                          f"{err:.1e}): the conv's output is used elsewhere too") for pair in traced]
                report.folded_batch_norms = n_folded
                fused = structured
    fused.eval()
    fused.fuse_report = report
    if report.unfused:
        warnings.warn("fuse: left unfused: " + "; ".join(f"{n} ({why})" for n, why in report.unfused),
                      UserWarning, stacklevel=2)
    return fused
