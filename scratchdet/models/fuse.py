"""Fused Conv-BN inference: ``fuse(model)`` folds every BatchNorm into its conv.

Every ``ConvBNAct`` becomes a :class:`FusedConvAct` (one ``conv_bn_act`` call:
conv + bias + ReLU) and every ``BasicBlock`` a :class:`FusedBasicBlock`, whose
second conv also does the residual add and the ReLU after it, in the same call.

On CPU in float32 two faster conv paths can be switched on for a fused model:
:func:`use_winograd` (the 3x3 stride-1 convs through Winograd F(4x4, 3x3),
:func:`scratchdet.ops.winograd_conv3x3`) and :func:`use_onednn_prepack` (the other
convs through weights prepacked for oneDNN). :class:`FastPredictor` turns both on.

Unfusable patterns (a conv that is not a plain zero-padded ``nn.Conv2d``, a
BatchNorm without running statistics, a BatchNorm outside a ``ConvBNAct``) are
left as they are: they are listed in ``fused.fuse_report.unfused`` and one
``UserWarning`` names them. The fused model is inference-only.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .. import ops
from ..ops.reference import fold_batch_norm
from ..ops import is_winograd_conv
from . import onednn
from .layers import BasicBlock, ConvBNAct

__all__ = ["fuse", "use_onednn_prepack", "use_winograd", "FusedConvAct", "FusedBasicBlock", "FuseReport"]


class _InferenceOnly(nn.Module):
    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError(f"{type(self).__name__} is inference-only (BatchNorm is folded into its weights); "
                               "train the original, unfused model instead")
        return super().train(False)


class FusedConvAct(_InferenceOnly):
    """``relu?(conv(x) + bias + residual?)`` through :func:`scratchdet.ops.conv_bn_act`.

    ``weight`` and ``bias`` are frozen parameters (so ``.to()``/``.half()`` and
    ``model.parameters()`` see them).
    """

    # Backend switches and caches. Class-level defaults, so fused models pickled before a switch
    # existed still load and run; instances set them through use_onednn_prepack / use_winograd.
    prepack = False                     # CPU fp32 through a prepacked oneDNN weight
    winograd = False                    # CPU fp32 3x3 stride 1 through Winograd F(4x4, 3x3)
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
    def from_conv_bn_act(cls, block: ConvBNAct, relu: bool | None = None) -> "FusedConvAct":
        conv, bn = block.conv, block.bn
        weight, bias = conv.weight, conv.bias
        if bn is not None:
            weight, bias = fold_batch_norm(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.weight,
                                           bn.bias, bn.eps)
        return cls(weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups,
                   block.act if relu is None else relu)

    @property
    def winograd_eligible(self) -> bool:
        """3x3, stride 1, padding 1, dilation 1, groups 1: the convs Winograd F(4x4, 3x3) computes."""
        return is_winograd_conv(self.weight.shape, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if (self.winograd or self.prepack) and self._can_prepack(x, residual):
            if self.winograd:
                return ops.winograd_conv3x3(x, self._winograd_weight(), self.bias, residual, self.relu)
            return onednn.conv_pointwise(x, self._packed_weight(x), self.bias, self.padding, self.stride,
                                         self.dilation, self.groups, self.relu, residual)
        return ops.conv_bn_act(x, self.weight, self.bias, residual, self.stride, self.padding, self.dilation,
                               self.groups, self.relu)

    def _can_prepack(self, x: torch.Tensor, residual: torch.Tensor | None) -> bool:
        # anything unusual (wrong shape, dtype, device, autograd, tracing) goes through the op,
        # which checks its inputs and names what is wrong
        w = self.weight
        return (x.device.type == "cpu" and w.device.type == "cpu" and x.dtype == w.dtype == torch.float32
                and x.dim() == 4 and x.shape[1] == w.shape[1] * self.groups
                and (self.bias is None or self.bias.dtype == torch.float32)
                and (residual is None or (residual.dtype == torch.float32 and residual.device.type == "cpu"))
                and not (torch.is_grad_enabled() and (x.requires_grad or (residual is not None
                                                                          and residual.requires_grad)))
                and not torch.jit.is_tracing() and not torch.compiler.is_compiling())

    def _weight_key(self):
        return (self.weight.data_ptr(), self.weight._version)   # an in-place change or .to() repacks

    def _packed_weight(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is None or self._packed[0] != self._weight_key():
            self._packed = (self._weight_key(), onednn.pack_weight(self.weight, self.padding, self.stride,
                                                                   self.dilation, self.groups, x.shape))
        return self._packed[1]

    def _winograd_weight(self) -> torch.Tensor:
        if self._wino_packed is None or self._wino_packed[0] != self._weight_key():
            self._wino_packed = (self._weight_key(), ops.winograd_f43_pack(self.weight))
        return self._wino_packed[1]

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
        self.conv1 = FusedConvAct.from_conv_bn_act(block.conv1)
        self.conv2 = FusedConvAct.from_conv_bn_act(block.conv2, relu=True)   # the ReLU after the add
        self.shortcut = None if block.shortcut is None else FusedConvAct.from_conv_bn_act(block.shortcut)
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


def _why_unfusable(block: ConvBNAct) -> str | None:
    conv, bn = block.conv, block.bn
    if type(conv) is not nn.Conv2d:
        return f"conv is {type(conv).__name__}, not nn.Conv2d"
    if conv.padding_mode != "zeros":
        return f"conv has padding_mode={conv.padding_mode!r} (only 'zeros' is fused)"
    if isinstance(conv.padding, str):
        return f"conv has padding={conv.padding!r} (only explicit padding is fused)"
    if bn is not None:
        if not isinstance(bn, nn.BatchNorm2d):
            return f"bn is {type(bn).__name__}, not nn.BatchNorm2d"
        if bn.running_mean is None or bn.running_var is None:
            return "bn has no running statistics (track_running_stats=False)"
    return None


def _count_bn(module: nn.Module | None) -> int:
    return 0 if module is None or module.bn is None else 1


def _fuse_children(module: nn.Module, prefix: str, report: FuseReport) -> None:
    for name, child in module.named_children():
        qual = f"{prefix}{name}"
        if isinstance(child, BasicBlock):
            parts = [child.conv1, child.conv2] + ([child.shortcut] if child.shortcut is not None else [])
            reasons = [r for r in map(_why_unfusable, parts) if r]
            if not reasons and type(child).forward is BasicBlock.forward:
                setattr(module, name, FusedBasicBlock(child))
                report.fused.append(qual)
                report.folded_batch_norms += sum(map(_count_bn, parts))
                continue
            if type(child).forward is not BasicBlock.forward:
                reasons.append(f"{type(child).__name__} overrides BasicBlock.forward")
            report.unfused.append((qual, "; ".join(reasons)))
            # fall through: its ConvBNActs may still be fusable one by one
        elif isinstance(child, ConvBNAct):
            reason = _why_unfusable(child)
            if reason is None and type(child).forward is ConvBNAct.forward:
                setattr(module, name, FusedConvAct.from_conv_bn_act(child))
                report.fused.append(qual)
                report.folded_batch_norms += _count_bn(child)
            else:
                report.unfused.append((qual, reason or f"{type(child).__name__} overrides ConvBNAct.forward"))
            continue
        elif isinstance(child, nn.modules.batchnorm._BatchNorm):
            report.unfused.append((qual, "BatchNorm outside a ConvBNAct (no conv to fold it into)"))
            continue
        _fuse_children(child, qual + ".", report)


@torch.no_grad()
def fuse(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` (in eval mode) with BatchNorm folded and conv + bias (+ residual)
    + ReLU run by :func:`scratchdet.ops.conv_bn_act`.

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
    if isinstance(fused, (ConvBNAct, BasicBlock)):  # a bare block: wrap so the loop can replace it
        holder = nn.Module()
        holder.add_module("block", fused)
        _fuse_children(holder, "", report)
        fused = holder.block
    else:
        _fuse_children(fused, "", report)
    fused.eval()
    fused.fuse_report = report
    if report.unfused:
        warnings.warn("fuse: left unfused: " + "; ".join(f"{n} ({why})" for n, why in report.unfused),
                      UserWarning, stacklevel=2)
    return fused


def use_onednn_prepack(fused_model: nn.Module, enabled: bool = True) -> int:
    """Route the fused convs of ``fused_model`` through prepacked oneDNN weights on CPU float32
    (:mod:`scratchdet.models.onednn`); other devices and dtypes keep using the op.

    Returns how many convs were switched. Raises ``RuntimeError`` if ``enabled`` and this
    torch build has no oneDNN.
    """
    if enabled and not onednn.available():
        raise RuntimeError("use_onednn_prepack: this torch build has no oneDNN (torch.backends.mkldnn)")
    count = 0
    for module in fused_model.modules():
        if isinstance(module, FusedConvAct):
            module.prepack, module._packed = bool(enabled), None
            count += 1
    return count


def use_winograd(fused_model: nn.Module, enabled: bool = True) -> int:
    """Route the 3x3 stride-1 fused convs of ``fused_model`` (:attr:`FusedConvAct.winograd_eligible`)
    through :func:`scratchdet.ops.winograd_conv3x3` on CPU float32; other convs, devices and dtypes
    are unaffected. It takes precedence over :func:`use_onednn_prepack` for the convs it covers.

    The result differs from the direct conv by rounding only (about 1e-5 relative per layer).
    Returns how many convs were switched.
    """
    count = 0
    for module in fused_model.modules():
        if isinstance(module, FusedConvAct):
            module.winograd = bool(enabled) and module.winograd_eligible
            module._wino_packed = None
            count += module.winograd
    return count

