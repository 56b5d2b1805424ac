"""Which kernel a fused conv runs on: :class:`BackendConv`, the base of
:class:`scratchdet.models.fused_layers.FusedConvAct`, holds the switches and caches set here
and runs its forward through :func:`select`.

By default every fused conv calls :func:`scratchdet.ops.conv_bn_act`. On CPU in float32 two
faster paths can be switched on for a fused model, each caching a weight packed once:

- :func:`use_winograd`: the 3x3 stride-1 convs through Winograd F(4x4, 3x3)
  (:func:`scratchdet.ops.winograd_conv3x3`); it takes precedence where it applies;
- :func:`use_onednn_prepack`: the other convs through weights prepacked for oneDNN
  (:mod:`scratchdet.models.onednn`), bias / residual / ReLU as oneDNN post-ops;
- :func:`use_tuned_backends`: per 3x3 stride-1 conv, whichever of Winograd F(4x4, 3x3),
  Winograd F(6x6, 3x3) and the direct conv is faster on this machine, timed once per input shape
  (TensorRT-style tactic selection: which one wins depends on the CPU, the layer's width and its
  map size, benchmarks/RESULTS.md).
  The timing reads ``time.perf_counter`` unless another ``clock`` is given (tests use a fake one).

Anything unusual (another dtype or device, autograd, tracing, a wrong channel count) goes
through the op, which checks its inputs and names what is wrong.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn as nn

from .. import ops
from . import onednn

__all__ = ["BackendConv", "backend_name", "select", "tactics", "use_onednn_prepack", "use_tuned_backends",
           "use_winograd"]

# Timed calls per candidate when a tuned conv meets a new input shape (after one untimed call that
# packs the weight); the fastest single call decides, so a preempted call does not.
TUNING_ROUNDS = 2


def _cpu_fp32_inference(conv, x: torch.Tensor, residual: torch.Tensor | None) -> bool:
    w = conv.weight
    return (x.device.type == "cpu" and w.device.type == "cpu" and x.dtype == w.dtype == torch.float32
            and x.dim() == 4 and x.shape[1] == w.shape[1] * conv.groups
            and (conv.bias is None or conv.bias.dtype == torch.float32)
            and (residual is None or (residual.dtype == torch.float32 and residual.device.type == "cpu"))
            and not (torch.is_grad_enabled() and (x.requires_grad or (residual is not None
                                                                      and residual.requires_grad)))
            and not torch.jit.is_tracing() and not torch.compiler.is_compiling())


def _weight_key(conv):
    return (conv.weight.data_ptr(), conv.weight._version)   # an in-place change or .to() repacks


def _packed_weight(conv, attr: str, pack):
    """The weight as ``pack(weight)`` made it, cached on the conv in ``attr`` as (weight key,
    packed) and repacked when the weight changed."""
    cached = getattr(conv, attr)
    if cached is None or cached[0] != _weight_key(conv):
        cached = (_weight_key(conv), pack(conv.weight))
        setattr(conv, attr, cached)
    return cached[1]


def _run_winograd(conv, x, residual):
    packed = _packed_weight(conv, "_wino_packed", ops.winograd_f43_pack)
    return ops.winograd_conv3x3(x, packed, conv.bias, residual, conv.relu)


def _run_winograd_f63(conv, x, residual):
    packed = _packed_weight(conv, "_wino63_packed", ops.winograd_f63_pack)
    return ops.winograd_conv3x3(x, packed, conv.bias, residual, conv.relu)


def _run_onednn(conv, x, residual):
    packed = _packed_weight(conv, "_packed", lambda w: onednn.pack_weight(w, conv.padding, conv.stride,
                                                                          conv.dilation, conv.groups, x.shape))
    return onednn.conv_pointwise(x, packed, conv.bias, conv.padding, conv.stride, conv.dilation,
                                 conv.groups, conv.relu, residual)


def _run_op(conv, x, residual):
    return ops.conv_bn_act(x, conv.weight, conv.bias, residual, conv.stride, conv.padding, conv.dilation,
                           conv.groups, conv.relu)


_BACKENDS = {"winograd": _run_winograd, "winograd-f63": _run_winograd_f63, "onednn-prepacked": _run_onednn,
             "conv_bn_act": _run_op}
# what use_tuned_backends times against the direct conv
_WINOGRAD_TACTICS = ("winograd", "winograd-f63")


def _direct_name(conv) -> str:
    return "onednn-prepacked" if conv.prepack else "conv_bn_act"


def _tactic_key(conv, x, residual) -> tuple:
    # what decides the speed, so the repeated blocks of a ResNet stage share one timing
    return tuple(conv.weight.shape), tuple(x.shape), residual is not None


def _run_tuned(conv, x, residual):
    """Time both Winograd tile sizes against the direct conv on this call's shapes (with the conv's
    clock, set by use_tuned_backends), record the fastest in the model's table and return its output."""
    candidates = [*_WINOGRAD_TACTICS, _direct_name(conv)]
    clock = conv._clock or time.perf_counter
    outputs = {name: _BACKENDS[name](conv, x, residual) for name in candidates}   # packs the weights
    best_time = dict.fromkeys(candidates, float("inf"))
    for _ in range(TUNING_ROUNDS):
        for name in candidates:     # interleaved, so a slow moment of the machine hits both
            start = clock()
            outputs[name] = _BACKENDS[name](conv, x, residual)
            best_time[name] = min(best_time[name], clock() - start)
    name = min(candidates, key=best_time.__getitem__)
    conv._tactics[_tactic_key(conv, x, residual)] = name
    _drop_unused_packs(conv)
    return outputs[name]


def _drop_unused_packs(conv) -> None:
    """Drop the packed weights (Winograd's are 4x and 7x the weight) of the backends that no input
    shape of this weight shape chose, so that a conv serving two batch sizes with two tactics keeps
    both packs instead of repacking at every switch."""
    weight_shape = tuple(conv.weight.shape)
    used = {name for key, name in conv._tactics.items() if key[0] == weight_shape}
    if "winograd" not in used:
        conv._wino_packed = None
    if "winograd-f63" not in used:
        conv._wino63_packed = None
    if not used - set(_WINOGRAD_TACTICS):
        conv._packed = None


def backend_name(conv, x: torch.Tensor, residual: torch.Tensor | None) -> str:
    """What ``conv(x, residual)`` runs on: "winograd" (F(4x4, 3x3)), "winograd-f63" (F(6x6, 3x3),
    chosen by tuning only), "onednn-prepacked", "conv_bn_act", or "tuning" for a tuned conv whose
    shapes have not been timed yet."""
    if not (conv.winograd or conv.prepack or conv.tune) or not _cpu_fp32_inference(conv, x, residual):
        return "conv_bn_act"
    if conv.tune:
        return conv._tactics.get(_tactic_key(conv, x, residual), "tuning")
    return "winograd" if conv.winograd else "onednn-prepacked"


def select(conv, x: torch.Tensor, residual: torch.Tensor | None) -> Callable:
    """The backend ``conv(x, residual)`` runs on: ``backend(conv, x, residual)``."""
    name = backend_name(conv, x, residual)
    return _run_tuned if name == "tuning" else _BACKENDS[name]


class BackendConv(nn.Module):
    """A conv whose kernel this module picks: the backend switches and caches that
    :func:`use_onednn_prepack`, :func:`use_winograd` and :func:`use_tuned_backends` set, and a
    forward through :func:`select`. A subclass (``FusedConvAct``) holds ``weight``, ``bias``,
    ``stride``, ``padding``, ``dilation``, ``groups`` and ``relu``.
    """

    # Class-level defaults, so fused models pickled before a switch existed still load and run.
    prepack = False                     # CPU fp32 through a prepacked oneDNN weight
    winograd = False                    # CPU fp32 3x3 stride 1 through Winograd F(4x4, 3x3)
    tune = False                        # CPU fp32 3x3 stride 1: Winograd or direct, whichever is faster
    _tactics = None                     # the model's table of timed choices (use_tuned_backends)
    _clock = None                       # what tuning reads the time from; None: time.perf_counter
    _packed = None                      # (weight version key, packed weight); never saved or copied
    _wino_packed = None                 # the same for the Winograd F(4x4, 3x3)-transformed weight
    _wino63_packed = None               # and for the F(6x6, 3x3)-transformed one

    @property
    def winograd_eligible(self) -> bool:
        """3x3, stride 1, padding 1, dilation 1, groups 1: the convs Winograd F(4x4, 3x3) computes."""
        return ops.is_winograd_conv(self.weight.shape, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        return select(self, x, residual)(self, x, residual)

    def __getstate__(self):
        state = dict(super().__getstate__())
        state["_packed"] = None         # oneDNN's opaque tensors neither pickle nor deep-copy
        state["_wino_packed"] = None    # derived from the weight: not worth saving
        state["_wino63_packed"] = None
        return state


def _fused_convs(fused_model: nn.Module) -> list[BackendConv]:
    return [m for m in fused_model.modules() if isinstance(m, BackendConv)]


def use_onednn_prepack(fused_model: nn.Module, enabled: bool = True) -> int:
    """Route the fused convs of ``fused_model`` through prepacked oneDNN weights on CPU float32;
    other devices and dtypes keep using the op.

    Returns how many convs were switched. Raises ``RuntimeError`` if ``enabled`` and this
    torch build has no oneDNN.
    """
    if enabled and not onednn.available():
        raise RuntimeError("use_onednn_prepack: this torch build has no oneDNN (torch.backends.mkldnn)")
    convs = _fused_convs(fused_model)
    for conv in convs:
        conv.prepack, conv._packed = bool(enabled), None
    return len(convs)


def use_winograd(fused_model: nn.Module, enabled: bool = True) -> int:
    """Route the 3x3 stride-1 fused convs of ``fused_model`` (``FusedConvAct.winograd_eligible``)
    through :func:`scratchdet.ops.winograd_conv3x3` on CPU float32; other convs, devices and dtypes
    are unaffected. It takes precedence over :func:`use_onednn_prepack` for the convs it covers.

    The result differs from the direct conv by rounding only (about 1e-5 relative per layer).
    Returns how many convs were switched.
    """
    count = 0
    for conv in _fused_convs(fused_model):
        conv.winograd = bool(enabled) and conv.winograd_eligible
        conv._wino_packed = conv._wino63_packed = None   # repacked on first use
        count += conv.winograd
    return count


def use_tuned_backends(fused_model: nn.Module, enabled: bool = True,
                       clock: Callable[[], float] | None = None) -> int:
    """Let the 3x3 stride-1 fused convs of ``fused_model`` (``FusedConvAct.winograd_eligible``) pick
    Winograd F(4x4, 3x3), Winograd F(6x6, 3x3) or the direct conv (prepacked oneDNN if
    :func:`use_onednn_prepack` is on, else the op) on CPU float32 by timing all three, the first
    time a (weight shape, input shape, residual) comes up; convs of the same shapes share that
    choice (:func:`tactics`). Tuning a shape costs ``3 * (1 + TUNING_ROUNDS)`` runs of that layer.
    It takes precedence over :func:`use_winograd` for the convs it covers. Returns how many convs
    were switched.

    ``clock`` (seconds, as ``time.perf_counter``, the default) is what the timing reads: a test
    passes a fake clock so that the choice does not depend on how busy the machine is. It is kept
    on the convs, so it has to pickle if the model is pickled.
    """
    table: dict = {}
    count = 0
    for conv in _fused_convs(fused_model):
        conv.tune = bool(enabled) and conv.winograd_eligible
        conv._wino_packed = conv._wino63_packed = None
        conv._tactics = table if conv.tune else None
        conv._clock = clock if conv.tune else None
        count += conv.tune
    return count


def tactics(fused_model: nn.Module) -> dict[tuple, str]:
    """The choices of the tuned convs so far: ``{(weight shape, input shape, has residual): backend}``."""
    table: dict = {}
    for conv in _fused_convs(fused_model):
        if conv.tune and conv._tactics:
            table.update(conv._tactics)
    return table
