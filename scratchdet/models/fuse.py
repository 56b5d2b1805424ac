"""Fused Conv-BN inference: ``fuse(model)`` folds every BatchNorm into its conv.

Every ``ConvNormAct`` becomes a :class:`FusedConvAct` (one ``conv_bn_act`` call:
conv + bias + ReLU) and every ``BasicBlock`` a :class:`FusedBasicBlock`, whose
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

from ..ops.reference import fold_batch_norm
from ..ops import is_winograd_conv
from . import conv_backends
from .layers import BasicBlock, Bias2d, BNReLU2d, ConvNormAct

__all__ = ["fuse", "FusedConvAct", "FusedBasicBlock", "FuseReport"]


class _InferenceOnly(nn.Module):
    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError(f"{type(self).__name__} is inference-only (BatchNorm is folded into its weights); "
                               "train the original, unfused model instead")
        return super().train(False)


_PLAIN_BATCH_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm, BNReLU2d)   # eval mode: plain BatchNorm


def _folded(conv: nn.Conv2d, norm: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of ``conv`` followed by ``norm``: an eval-mode BatchNorm, a Bias2d or None."""
    if norm is None:
        return conv.weight, conv.bias
    if isinstance(norm, Bias2d):
        bias = norm.bias if conv.bias is None else conv.bias + norm.bias
        return conv.weight, bias
    return fold_batch_norm(conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                           norm.eps)


class FusedConvAct(_InferenceOnly):
    """``relu?(conv(x) + bias + residual?)`` through :func:`scratchdet.ops.conv_bn_act`.

    ``weight`` and ``bias`` are frozen parameters (so ``.to()``/``.half()`` and
    ``model.parameters()`` see them).
    """

    # Backend switches and caches, set by scratchdet.models.conv_backends. Class-level defaults,
    # so fused models pickled before a switch existed still load and run.
    prepack = False                     # CPU fp32 through a prepacked oneDNN weight
    winograd = False                    # CPU fp32 3x3 stride 1 through Winograd F(4x4, 3x3)
    tune = False                        # CPU fp32 3x3 stride 1: Winograd or direct, whichever is faster
    _tactics = None                     # the model's table of timed choices (conv_backends.use_tuned_backends)
    _packed = None                      # (weight version key, packed weight); never saved or copied
    _wino_packed = None                 # the same for the Winograd-transformed weight

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding, dilation, groups: int,
                 relu: bool):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.stride, self.padding, self.dilation = list(stride), list(padding), list(dilation)
        self.groups, self.relu = int(groups), bool(relu)
        self.training = False

    @classmethod
    def from_conv_norm_act(cls, block: ConvNormAct, relu: bool | None = None) -> "FusedConvAct":
        return cls.from_conv(block.conv, block.norm, block.act if relu is None else relu)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, bn: nn.Module | None = None, relu: bool = False) -> "FusedConvAct":
        """``conv`` with the eval-mode BatchNorm ``bn`` (or None) after it folded in."""
        weight, bias = _folded(conv, bn)
        return cls(weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups, relu)

    @property
    def winograd_eligible(self) -> bool:
        """3x3, stride 1, padding 1, dilation 1, groups 1: the convs Winograd F(4x4, 3x3) computes."""
        return is_winograd_conv(self.weight.shape, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        return conv_backends.select(self, x, residual)(self, x, residual)

    def __getstate__(self):
        state = dict(super().__getstate__())
        state["_packed"] = None         # oneDNN's opaque tensors neither pickle nor deep-copy
        state["_wino_packed"] = None    # derived from the weight: not worth saving
        return state

    def extra_repr(self) -> str:
        o, i, kh, kw = self.weight.shape
        return (f"{i * self.groups}, {o}, kernel_size=({kh}, {kw}), stride={tuple(self.stride)}, "
                f"padding={tuple(self.padding)}, dilation={tuple(self.dilation)}, groups={self.groups}, "
                f"relu={self.relu}")


class FusedBasicBlock(_InferenceOnly):
    """BasicBlock in (2 or 3) op calls: conv1+ReLU, [shortcut], conv2 + add + ReLU."""

    def __init__(self, block: BasicBlock):
        super().__init__()
        self.conv1 = FusedConvAct.from_conv_norm_act(block.conv1)
        self.conv2 = FusedConvAct.from_conv_norm_act(block.conv2, relu=True)   # the ReLU after the add
        self.shortcut = None if block.shortcut is None else FusedConvAct.from_conv_norm_act(block.shortcut)
        self.training = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        return self.conv2(self.conv1(x), residual=identity)


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
                setattr(module, name, FusedBasicBlock(child))
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
                setattr(module, name, FusedConvAct.from_conv_norm_act(child))
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
            _set(model, conv_name, FusedConvAct.from_conv(conv, norm, relu))
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
