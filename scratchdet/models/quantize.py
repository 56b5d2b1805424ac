"""Post-training int8 quantisation of a detector for CPU inference: ``scratchdet.quantize``.

    predictor = scratchdet.quantize(model, calibration_images)   # PIL images, arrays, [3,H,W] tensors
    results = predictor.predict(images)                          # the same arguments and results as model.predict
    predictor.save("q.pt"); predictor = load_quantized("q.pt")

What it does, in order:

1. **Fold** the model as :class:`FastPredictor` does (:func:`scratchdet.fuse`: BN folded, the
   residual add and the ReLU after it fused into the second conv of each block).
2. **Calibrate**: the fused fp32 network runs over the calibration images (the model's own
   ``preprocess``, so the pixels are those of ``predict``); an observer per fused conv records the
   range of its input, its residual and its output (after the add and the ReLU).
   ``observer="minmax"`` (default) takes the running min / max; ``"percentile"`` clips to the
   0.01 / 99.99 percentiles of each batch, averaged. Deterministic: the same images give the same
   ranges (no sampling; the images are processed in the order given).
3. **Quantise**: weights per output channel, symmetric int8 (scale ``max|w_c| / 127``, zero point
   0; 7 bits, ``/ 63``, on a CPU whose int8 conv saturates its int16 pair sums, e.g. AVX2 without
   VNNI: :func:`weight_levels` finds out by running one conv); activations per tensor, asymmetric
   uint8 from the calibrated range (a ReLU output has zero point 0). The convs named by
   ``float_layers`` (``"first"``: the first conv, ``"heads"``: the loc and conf heads, or
   qualified module names) keep their fp32 fused conv.
4. **Plan** which tensors stay int8 between layers: one traced forward records who consumes each
   conv's output. An output that only int8 convs consume stays uint8 (the consumer reads it with
   the producer's scale, so there is no requantisation pass; a max-pool in between passes uint8
   on); anything else (a float conv, an add outside a fused block, the network's outputs) gets fp32.

The engine is oneDNN's int8 convolution as PyTorch ships it for Inductor's x86 int8 lowering
(``torch.ops.onednn.qconv_prepack`` / ``qconv2d_pointwise``, with the bias, the residual add
(``sum`` post-op) and the ReLU fused, on plain uint8 / int8 tensors). Why this one and what else
was tried: docs/DESIGN.md, "int8 inference".

The saved file (:meth:`QuantizedPredictor.save`) is its own format, ``scratchdet.int8``: the fp32
model's checkpoint (``scratchdet.save``'s dict) plus the calibrated ranges and the settings, so
loading rebuilds the same int8 network bit for bit on the same kind of CPU (weights are
requantised from the fp32 weights, which is deterministic, with that CPU's :func:`weight_levels`).
:func:`load_quantized` refuses, in one line, a platform without the oneDNN int8 ops.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from ..structures.errors import CheckpointError, UserError
from ..structures.files import atomic_save
from . import onednn
from .conv_backends import use_onednn_prepack
from .fuse import fuse
from .fused_layers import FusedConvAct
from .io import checkpoint_payload, model_from_payload
from .ssd import predict_images
from .tiling import DEFAULT_OVERLAP, tiling_plan
from .uint8_pool import max_pool2d_uint8

__all__ = ["quantize", "load_quantized", "is_quantized_file", "QuantizedPredictor", "Int8Conv",
           "engine_available", "weight_levels", "OBSERVERS", "FORMAT", "VERSION"]

FORMAT = "scratchdet.int8"
VERSION = 1
OBSERVERS = ("minmax", "percentile")
_PERCENTILE = 1e-4            # "percentile" clips this fraction of values at each end
_PERCENTILE_SAMPLE = 1 << 20  # values per batch it takes the quantiles of (a fixed stride: deterministic)


def engine_available() -> str | None:
    """None when this machine can run the int8 engine, else why not (one line)."""
    if not torch.backends.mkldnn.is_available():
        return "this PyTorch build has no oneDNN (mkldnn), which the int8 engine runs on"
    try:
        ok = hasattr(torch.ops.onednn, "qconv2d_pointwise") and hasattr(torch.ops.onednn, "qconv_prepack")
    except RuntimeError:
        ok = False
    if not ok:
        return f"this PyTorch ({torch.__version__}) lacks the oneDNN int8 ops (torch.ops.onednn.qconv2d_pointwise)"
    return None


def _qparams_from_range(lo: float, hi: float) -> tuple[float, int]:
    """Asymmetric uint8 (scale, zero point) covering [lo, hi] and 0."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = max((hi - lo) / 255.0, 1e-8)
    zero_point = int(min(255, max(0, round(-lo / scale))))
    return scale, zero_point


@functools.cache
def weight_levels() -> int:
    """The int8 weights' largest magnitude on this CPU: 127, or 63 where oneDNN's int8 convolution
    saturates. Without VNNI (AVX2-only CPUs such as AMD Zen 2) it multiplies with ``vpmaddubsw``,
    which adds pairs of uint8 x int8 products in int16: 2 x 255 x 127 overflows it, and a conv on
    bright inputs came out 35 quantisation steps off (half its exact value in the worst case);
    with 7-bit weights 2 x 255 x 63 fits and the integer arithmetic is exact again (ONNX Runtime's
    ``reduce_range`` and NNCF's overflow fix do the same). Found once per process by running one
    such conv and comparing it with its exact sum, not from the CPU's flags."""
    return 127 if _int8_conv_is_exact(127) else 63


def _int8_conv_is_exact(levels: int) -> bool:
    """Whether a 3x3 conv of 64 channels of 255s with weights of ``levels`` gives its exact sum."""
    x = torch.full((1, 64, 4, 4), 255, dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    w = torch.full((16, 64, 3, 3), levels, dtype=torch.int8)
    scale, zero = torch.ones(16), torch.zeros(16, dtype=torch.long)
    packed = torch.ops.onednn.qconv_prepack(w, scale, 1.0, 0, [1, 1], [0, 0], [1, 1], 1, list(x.shape))
    y = torch.ops.onednn.qconv2d_pointwise(x, 1.0, 0, packed, scale, zero, None, [1, 1], [0, 0], [1, 1], 1,
                                           1.0, 0, torch.float32, "none", [], "")
    return bool((y == 64 * 9 * 255 * levels).all())      # < 2 ** 24: exact in float32


def quantize_weight(weight: torch.Tensor, levels: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric int8: ``(int8 weight, float32 scales [O])``, ``w ~ q * scale``,
    ``|q| <= levels`` (default :func:`weight_levels`: 127, or 63 on a CPU whose int8 conv saturates)."""
    levels = weight_levels() if levels is None else int(levels)
    if not 1 <= levels <= 127:
        raise ValueError(f"levels must be in [1, 127], got {levels}")
    w = weight.detach().float()
    scale = (w.abs().flatten(1).amax(1) / levels).clamp_min(1e-12)
    q = torch.round(w / scale.view(-1, *([1] * (w.dim() - 1)))).clamp_(-levels, levels).to(torch.int8)
    return q, scale


def quantize_activation(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """fp32 -> uint8 with (scale, zero point), round half to even, saturating."""
    return torch.div(x, scale).round_().add_(zero_point).clamp_(0, 255).to(torch.uint8)


class _RangeObserver:
    """The calibrated range of one tensor: min / max, or the averaged per-batch percentiles."""

    def __init__(self, kind: str):
        self.kind, self.lo, self.hi, self.n = kind, float("inf"), float("-inf"), 0

    def observe(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        if self.kind == "minmax":
            self.lo, self.hi = min(self.lo, x.min().item()), max(self.hi, x.max().item())
            return
        flat = x.flatten()
        if flat.numel() > _PERCENTILE_SAMPLE:
            flat = flat[:: flat.numel() // _PERCENTILE_SAMPLE + 1]
        lo, hi = torch.quantile(flat, torch.tensor([_PERCENTILE, 1 - _PERCENTILE])).tolist()
        if self.n == 0:
            self.lo, self.hi = lo, hi
        else:
            self.lo, self.hi = self.lo + (lo - self.lo) / (self.n + 1), self.hi + (hi - self.hi) / (self.n + 1)
        self.n += 1

    def range(self) -> tuple[float, float] | None:
        return None if self.lo > self.hi else (self.lo, self.hi)


class Int8Conv(nn.Module):
    """``relu?(conv(x) + bias + residual?)`` with int8 weights (per channel) and uint8 activations.

    ``x`` and ``residual`` may arrive as uint8 (quantised with ``in_q`` / ``res_q``: the producer's
    output parameters, set by the plan) or fp32 (quantised here). The output is uint8 with
    ``out_q`` when the plan says every consumer is an int8 conv (``emit_uint8``), else fp32.
    """

    def __init__(self, conv: FusedConvAct, in_range, res_range, out_range):
        super().__init__()
        q, scale = quantize_weight(conv.weight)
        self.register_buffer("qweight", q)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().float().clone())
        self.register_buffer("weight_zero_point", torch.zeros(q.shape[0], dtype=torch.long), persistent=False)
        self.stride, self.padding, self.dilation = list(conv.stride), list(conv.padding), list(conv.dilation)
        self.groups, self.relu = int(conv.groups), bool(conv.relu)
        self.in_q = _qparams_from_range(*in_range)
        self.res_q = None if res_range is None else _qparams_from_range(*res_range)
        lo, hi = out_range
        self.out_q = _qparams_from_range(0.0 if self.relu else lo, hi)
        self.emit_uint8 = False
        self.clone_residual = True       # oneDNN's sum post-op writes into the residual: unless the plan
                                         # saw this conv read it last, it works on a copy
        self._packed = None              # (key, oneDNN weight): never saved or copied
        self._plan_hook = None

    def extra_repr(self) -> str:
        o, i, kh, kw = self.qweight.shape
        return (f"{i * self.groups}, {o}, kernel_size=({kh}, {kw}), stride={tuple(self.stride)}, int8, "
                f"relu={self.relu}, out={'uint8' if self.emit_uint8 else 'fp32'}")

    def __getstate__(self):
        state = dict(super().__getstate__())
        state["_packed"] = None          # oneDNN's opaque tensors neither pickle nor deep-copy
        return state

    def _weight(self, x_shape) -> torch.Tensor:
        key = (self.in_q, self.qweight.data_ptr())
        if self._packed is None or self._packed[0] != key:
            packed = torch.ops.onednn.qconv_prepack(self.qweight, self.weight_scale, self.in_q[0], self.in_q[1],
                                                    self.stride, self.padding, self.dilation, self.groups,
                                                    list(x_shape))
            self._packed = (key, packed)
        return self._packed[1]

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if self._plan_hook is not None:
            self._plan_hook(self, x, residual)
        if x.dtype != torch.uint8:
            x = quantize_activation(x.contiguous(memory_format=torch.channels_last), *self.in_q)
        out_scale, out_zp = self.out_q if self.emit_uint8 else (1.0, 0)
        out_dtype = None if self.emit_uint8 else torch.float32
        w = self._weight(x.shape)
        zeros = self.weight_zero_point
        unary = "relu" if self.relu else "none"
        if residual is None:
            return torch.ops.onednn.qconv2d_pointwise(x, self.in_q[0], self.in_q[1], w, self.weight_scale, zeros,
                                                      self.bias, self.stride, self.padding, self.dilation,
                                                      self.groups, out_scale, out_zp, out_dtype, unary, [], "")
        if self.emit_uint8:
            if residual.dtype != torch.uint8:
                residual = quantize_activation(residual.contiguous(memory_format=torch.channels_last), *self.res_q)
            elif self.clone_residual:
                residual = residual.clone(memory_format=torch.channels_last)
            acc_scale, acc_zp = self.res_q
        else:   # fp32 out: oneDNN adds the fp32 residual in place
            residual = (residual.float().clone(memory_format=torch.channels_last) if residual.dtype != torch.uint8
                        else ((residual.float() - self.res_q[1]) * self.res_q[0]).contiguous(
                            memory_format=torch.channels_last))
            acc_scale, acc_zp = 1.0, 0
        return torch.ops.onednn.qconv2d_pointwise.binary(
            x, self.in_q[0], self.in_q[1], w, self.weight_scale, zeros, residual, self.bias, self.stride,
            self.padding, self.dilation, self.groups, out_scale, out_zp, out_dtype, acc_scale, acc_zp, "sum", 1.0,
            None if unary == "none" else unary, [], "")


def reference_int8_conv(conv: Int8Conv, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    """The float reference of :class:`Int8Conv`'s arithmetic: dequantised uint8 input times
    dequantised int8 weight (exact in fp64: products of small integers), + bias + residual, ReLU,
    then the output's requantisation. Tests compare the engine against it."""
    qx = x if x.dtype == torch.uint8 else quantize_activation(x, *conv.in_q)
    xs, xz = conv.in_q
    acc = torch.nn.functional.conv2d(qx.double() - xz, conv.qweight.double(), None, conv.stride, conv.padding,
                                     conv.dilation, conv.groups)           # integers, exact in fp64
    y = acc * (xs * conv.weight_scale.double()).view(1, -1, 1, 1)
    if conv.bias is not None:
        y = y + conv.bias.double().view(1, -1, 1, 1)
    if residual is not None:
        if residual.dtype == torch.uint8:
            residual = (residual.double() - conv.res_q[1]) * conv.res_q[0]
        elif conv.emit_uint8:
            residual = (quantize_activation(residual, *conv.res_q).double() - conv.res_q[1]) * conv.res_q[0]
        y = y + residual.double()
    if conv.relu:
        y = y.clamp_min(0)
    if conv.emit_uint8:
        return quantize_activation(y, *conv.out_q)
    return y.float()


@dataclass
class QuantReport:
    """What :func:`quantize` did: the int8 convs, the fp32 ones, and which outputs stay uint8."""
    int8: list[str] = field(default_factory=list)
    float_kept: list[str] = field(default_factory=list)
    uint8_outputs: list[str] = field(default_factory=list)


def _conv_names(fused: nn.Module) -> list[str]:
    return [name for name, m in fused.named_modules() if isinstance(m, FusedConvAct)]


def _resolve_float_layers(fused: nn.Module, float_layers: Iterable[str]) -> set[str]:
    names = _conv_names(fused)
    chosen = set()
    for item in float_layers:
        if item == "first":
            chosen.update(names[:1])
        elif item == "heads":
            chosen.update(n for n in names if n.startswith(("loc_heads.", "conf_heads.")))
        elif item in names:
            chosen.add(item)
        else:
            raise UserError(f"scratchdet.quantize: float_layers: {item!r} is not 'first', 'heads' or a fused conv "
                            f"of this model (e.g. {names[0] if names else 'none'})")
    return chosen


def _calibrate(fused: nn.Module, batches: Iterable[torch.Tensor], observer: str) -> dict:
    """Run the fused fp32 network over the batches; per conv: {"in", "res", "out"} ranges."""
    observers: dict[str, dict[str, _RangeObserver]] = {}
    hooks = []

    def hook_for(name):
        obs = observers.setdefault(name, {k: _RangeObserver(observer) for k in ("in", "res", "out")})

        def on_forward(module, args, kwargs, out):
            obs["in"].observe(args[0])
            residual = kwargs.get("residual", args[1] if len(args) > 1 else None)
            if residual is not None:
                obs["res"].observe(residual)
            obs["out"].observe(out)
        return on_forward

    for name in _conv_names(fused):
        hooks.append(fused.get_submodule(name).register_forward_hook(hook_for(name), with_kwargs=True))
    n = 0
    try:
        with torch.inference_mode():
            for batch in batches:
                fused.forward_raw(batch.contiguous(memory_format=torch.channels_last))
                n += 1
    finally:
        for h in hooks:
            h.remove()
    if n == 0:
        raise UserError("scratchdet.quantize: no calibration images; give at least one image of the kind the "
                        "model will see")
    return {name: {k: o.range() for k, o in obs.items()} for name, obs in observers.items()}


class _PlanMode(TorchFunctionMode):
    """During the planning forward: any torch function (outside an int8 conv) that reads an int8
    conv's output makes that output fp32."""

    def __init__(self, producers: dict, reads: dict):
        super().__init__()
        self.producers, self.reads, self.must_float, self.inside = producers, reads, set(), 0
        self.pooled: set[str] = set()      # producers whose output goes through a max-pool

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.inside and _is_uint8_pool(func, args, kwargs) and id(args[0]) in self.producers:
            # max-pooling commutes with the (monotonic) quantisation: the pooled tensor is its input's
            # producer's output too, and a uint8 producer stays uint8 through it (_Uint8Pooling)
            self.reads.setdefault(id(args[0]), [args[0]]).append("other")
            out = func(*args, **kwargs)
            self.producers[id(out)] = (self.producers[id(args[0])][0], out)
            self.pooled.add(self.producers[id(args[0])][0])
            return out
        if not self.inside:
            for a in _flat(args) + _flat(list(kwargs.values())):
                if isinstance(a, torch.Tensor):
                    self.reads.setdefault(id(a), [a]).append("other")
                    if id(a) in self.producers:
                        self.must_float.add(self.producers[id(a)][0])
        return func(*args, **kwargs)


_MAX_POOLS = (torch.nn.functional.max_pool2d, torch.max_pool2d)


def _is_uint8_pool(func, args, kwargs) -> bool:
    """A max-pool (without indices) that may take a uint8 producer's output."""
    return (func in _MAX_POOLS and len(args) > 0 and isinstance(args[0], torch.Tensor) and args[0].dim() == 4
            and not kwargs.get("return_indices", False) and not (len(args) > 6 and args[6]))


class _Uint8Pooling(TorchFunctionMode):
    """At run time: a max-pool on a uint8 tensor (which torch's CPU max-pool refuses channels_last)
    runs as :func:`max_pool2d_uint8`, channels_last; everything else passes."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _is_uint8_pool(func, args, kwargs) and args[0].dtype == torch.uint8:
            kwargs = {k: v for k, v in kwargs.items() if k not in ("return_indices", "input")}
            return max_pool2d_uint8(*args[:6], **kwargs)
        return func(*args, **kwargs)


def _flat(items) -> list:
    out = []
    for a in items:
        if isinstance(a, (list, tuple)):
            out += _flat(a)
        else:
            out.append(a)
    return out


def _plan(qmodel: nn.Module, example: torch.Tensor) -> list[str]:
    """Decide which int8 convs emit uint8 (every consumer an int8 conv) and point each consumer's
    input parameters at its producer's output parameters. Returns the names that emit uint8."""
    convs = {name: m for name, m in qmodel.named_modules() if isinstance(m, Int8Conv)}
    name_of = {id(m): n for n, m in convs.items()}
    producers: dict[int, tuple[str, torch.Tensor]] = {}     # id(output) -> (producer, output kept alive)
    consumers: dict[str, list[tuple[str, str]]] = {n: [] for n in convs}   # producer -> [(consumer, "x"|"res")]
    reads: dict[int, list] = {}     # id(tensor) -> [tensor, readers in order: (conv name, "x"|"res") or "other"]
    mode = _PlanMode(producers, reads)

    def plan_hook(conv, x, residual):
        for what, t in (("x", x), ("res", residual)):
            if t is not None:
                reads.setdefault(id(t), [t]).append((name_of[id(conv)], what))   # [0] keeps t (its id) alive
                if id(t) in producers:
                    consumers[producers[id(t)][0]].append((name_of[id(conv)], what))

    def on_output(module, args, out):
        producers[id(out)] = (name_of[id(module)], out)
        mode.inside -= 1

    def on_enter(module, args):
        mode.inside += 1

    hooks = []
    for conv in convs.values():
        conv.emit_uint8, conv._plan_hook = False, plan_hook
        hooks += [conv.register_forward_pre_hook(on_enter), conv.register_forward_hook(on_output)]
    try:
        with torch.inference_mode(), mode:
            outputs = qmodel.forward_raw(example)
        for t in _flat(list(outputs)):
            if id(t) in producers:
                mode.must_float.add(producers[id(t)][0])
    finally:
        for h in hooks:
            h.remove()
        for conv in convs.values():
            conv._plan_hook = None
    emitting = []
    qmodel.uint8_pooling = False
    for name, uses in consumers.items():
        if not uses or name in mode.must_float:
            continue
        producer = convs[name]
        producer.emit_uint8 = True
        emitting.append(name)
        qmodel.uint8_pooling |= name in mode.pooled
        for consumer, what in uses:
            target = convs[consumer]
            if what == "x":
                target.in_q = producer.out_q
                target._packed = None
            else:
                target.res_q = producer.out_q
    for conv in convs.values():
        conv.clone_residual = True
    for _, *tensor_reads in reads.values():      # a residual read last may be overwritten in place
        last = tensor_reads[-1]
        if last != "other" and last[1] == "res" and tensor_reads.count(last) == 1:
            convs[last[0]].clone_residual = False
    return emitting


def _build(model: nn.Module, ranges: dict, float_layers: Sequence[str]) -> tuple[nn.Module, QuantReport]:
    fused = fuse(model.cpu().eval())
    keep = _resolve_float_layers(fused, float_layers)
    report = QuantReport()
    for name in _conv_names(fused):
        r = ranges.get(name)
        if name in keep or r is None or r["in"] is None or r["out"] is None:
            report.float_kept.append(name)
            continue
        conv = fused.get_submodule(name)
        parent, _, attr = name.rpartition(".")
        setattr(fused.get_submodule(parent) if parent else fused, attr, Int8Conv(conv, r["in"], r["res"], r["out"]))
        report.int8.append(name)
    fused = fused.to(memory_format=torch.channels_last)
    use_onednn_prepack(fused, onednn.available())     # the fp32 convs kept: FastPredictor's direct path
    example = torch.zeros(1, 3, *fused.input_size).contiguous(memory_format=torch.channels_last)
    report.uint8_outputs = _plan(fused, example)
    return fused, report


class QuantizedPredictor:
    """The int8 detector: ``predict`` as :meth:`SSD.predict` / :meth:`FastPredictor.predict`,
    ``__call__(batch)`` as :meth:`FastPredictor.__call__` (a normalised batch -> ``detect`` output).
    Built by :func:`quantize` or :func:`load_quantized`; CPU only."""

    training = False

    def __init__(self, model: nn.Module, ranges: dict, observer: str, float_layers: Sequence[str]):
        self.source_model = model            # the fp32 model: what save() writes
        self.ranges, self.observer, self.float_layers = ranges, observer, list(float_layers)
        self.model, self.report = _build(model, ranges, self.float_layers)
        self.device = torch.device("cpu")

    # the model's attributes the CLI and evaluation read
    @property
    def config(self):
        return self.model.config

    @property
    def class_names(self):
        return getattr(self.source_model, "class_names", None)

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    def set_detect_settings(self, **settings) -> None:
        self.model.set_detect_settings(**settings)
        self.source_model.set_detect_settings(**settings)

    def preprocess(self, images):
        # the fp32 model's: the int8 network may hold no parameter to take the dtype from
        return self.source_model.preprocess(images)

    def postprocess(self, detections, sizes) -> list[dict]:
        return self.model.postprocess(detections, sizes)

    def eval(self) -> "QuantizedPredictor":
        return self

    def train(self, mode: bool = True) -> "QuantizedPredictor":
        if mode:
            raise RuntimeError("QuantizedPredictor is inference-only; train the fp32 model")
        return self

    @torch.inference_mode()
    def forward_raw(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = batch.float().contiguous(memory_format=torch.channels_last)
        if getattr(self.model, "uint8_pooling", False):
            with _Uint8Pooling():
                return self.model.forward_raw(batch)
        return self.model.forward_raw(batch)

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor, score_threshold: float | None = None,
                 nms_threshold: float | None = None, top_k: int | None = None, keep_top_k: int | None = None):
        if batch.device.type != "cpu":
            raise UserError(f"QuantizedPredictor runs on CPU; the batch is on {batch.device}")
        loc, logits = self.forward_raw(batch)
        return self.model.detect(loc, logits, score_threshold=score_threshold, nms_threshold=nms_threshold,
                                 top_k=top_k, keep_top_k=keep_top_k)

    @torch.inference_mode()
    def predict(self, images, score_threshold: float | None = None, nms_threshold: float | None = None,
                top_k: int | None = None, keep_top_k: int | None = None, batch_size: int = 16,
                tile: int | None = None, tile_overlap: float = DEFAULT_OVERLAP,
                tile_whole_image: bool = False) -> list[dict]:
        """``SSD.predict`` through the int8 network: the same arguments (tiling included),
        preprocessing and results."""
        settings = self.model.resolve_detect_settings(score_threshold=score_threshold, nms_threshold=nms_threshold,
                                                      top_k=top_k, keep_top_k=keep_top_k)
        tiling = tiling_plan(tile, tile_overlap, tile_whole_image, settings)

        def detect_batch(batch):
            return self(batch, score_threshold=score_threshold, nms_threshold=nms_threshold, top_k=top_k,
                        keep_top_k=keep_top_k)
        return predict_images(detect_batch, self.preprocess, images, batch_size, tiling)

    def save(self, path) -> None:
        """Write the ``scratchdet.int8`` file: the fp32 checkpoint, the calibrated ranges, the settings."""
        payload = {"format": FORMAT, "version": VERSION, "model": checkpoint_payload(self.source_model),
                   "observer": self.observer, "float_layers": self.float_layers,
                   "ranges": {name: {k: None if v is None else [float(v[0]), float(v[1])] for k, v in r.items()}
                              for name, r in self.ranges.items()}}
        atomic_save(payload, path)


def _check_platform(what: str) -> None:
    why = engine_available()
    if why is not None:
        raise UserError(f"{what}: {why}; run the fp32 model (scratchdet.FastPredictor) instead")


def quantize(model: nn.Module, calibration_images, observer: str = "minmax",
             float_layers: Sequence[str] = (), batch_size: int = 8) -> QuantizedPredictor:
    """An int8 :class:`QuantizedPredictor` of ``model`` (not modified), calibrated on
    ``calibration_images`` (PIL images, uint8 arrays or ``[3, H, W]`` tensors, as ``predict``
    takes; a few dozen of the kind the model will see).

    ``observer``: "minmax" or "percentile" (see the module docstring). ``float_layers``: convs kept
    in fp32: "first", "heads", or qualified names of fused convs; none by default (every conv int8
    was as accurate as fp32 and the fastest, docs/INT8.md).
    Refuses (``UserError``, one line) a model that is not on the CPU, one with no conv the engine
    can run, and a machine without the oneDNN int8 ops.
    """
    _check_platform("scratchdet.quantize")
    if observer not in OBSERVERS:
        raise UserError(f"scratchdet.quantize: observer={observer!r}; choose one of {', '.join(OBSERVERS)}")
    if not hasattr(model, "forward_raw") or not hasattr(model, "preprocess"):
        raise UserError("scratchdet.quantize: expected a scratchdet detector (scratchdet.load / build_model)")
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise UserError(f"scratchdet.quantize: the int8 engine runs on CPU; the model is on {device} "
                        "(call model.cpu() first)")
    if any(m.training for m in model.modules()):
        raise UserError("scratchdet.quantize: the model is in training mode; call model.eval() first")
    if not isinstance(calibration_images, (list, tuple)):
        calibration_images = [calibration_images]
    fused = fuse(model)
    if not _conv_names(fused):
        raise UserError("scratchdet.quantize: the model has no conv that fuse() turns into a fused conv, so "
                        "nothing for the int8 engine to run")
    batches = (model.preprocess(calibration_images[i:i + batch_size])[0].float()
               for i in range(0, len(calibration_images), batch_size))
    ranges = _calibrate(fused, batches, observer)
    return QuantizedPredictor(model, ranges, observer, float_layers)


def is_quantized_file(path) -> bool:
    """True when ``path`` is a ``scratchdet.int8`` file (read with weights_only: runs no code)."""
    try:
        payload = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception:
        return False
    return isinstance(payload, dict) and payload.get("format") == FORMAT


def load_quantized(path, backbone: nn.Module | None = None) -> QuantizedPredictor:
    """Rebuild a :class:`QuantizedPredictor` written by :meth:`QuantizedPredictor.save`.
    ``CheckpointError`` for a file that is not one; ``UserError`` on a machine without the engine."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"scratchdet.load_quantized: no such file: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a scratchdet int8 file ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a scratchdet int8 file (make one with scratchdet quantize)")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: int8 format version {payload.get('version')!r}; this scratchdet reads {VERSION}")
    _check_platform(f"{path}")
    model = model_from_payload(payload.get("model"), path, backbone)
    ranges = {name: {k: None if v is None else tuple(v) for k, v in r.items()}
              for name, r in payload.get("ranges", {}).items()}
    return QuantizedPredictor(model, ranges, payload.get("observer", "minmax"), payload.get("float_layers", []))
