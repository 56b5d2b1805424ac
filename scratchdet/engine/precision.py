"""The precision a CPU run trains in: ``cpu_bf16`` = ``off`` (float32), ``on`` (bfloat16
autocast), ``auto`` (bfloat16 where this CPU does it natively and a timed training pass is
measurably faster; float32 otherwise) or ``""``, the default: ``auto`` for a run with a time budget
(whose length is already the machine's: bfloat16 buys more steps in the same minutes) and ``off``
for any other run (float32, bit for bit what it always was).

Under CPU autocast the convolutions and matrix products run in bfloat16 (oneDNN's AVX512_BF16 /
AMX kernels) and accumulate in float32; the weights, the optimizer, the loss and BatchNorm's
statistics stay float32, and bfloat16 has float32's exponent range, so no gradient scaler is
needed (CUDA's float16 ``amp`` keeps its own). On a CPU without native bfloat16 the same code runs
emulated and is slower than float32: ``auto`` then stays in float32 without timing anything. A
kernel choice that wins on one CPU can lose on another, so ``auto`` decides by measurement, not
by the CPU's flags alone.

torch 2.14's CPU bfloat16 convolution weight gradient is garbage (finite values around 1e31, or NaN)
for some strided convolutions on tiny feature maps where oneDNN runs native bfloat16 kernels
(AVX512_BF16 / AMX; emulated bfloat16 on an AVX2-only Zen 2 computed them right), e.g. a 3x3,
stride-2, padding-1 conv on a 1x1 input (an SSD's last extra layer at a small input size). So a bfloat16 run first checks every
convolution of its model, at the shapes it trains at, against float32 and keeps the ones that fail
in float32 (:func:`guard_bf16_convs`); the line the run prints names them.
"""
from __future__ import annotations

import contextlib
import copy

import torch

from ..structures.image import as_hw
from .data_fit import training_pass_seconds

__all__ = ["CPU_BF16_MODES", "AUTO_MIN_SPEEDUP", "native_bf16", "resolve_cpu_bf16", "training_autocast",
           "choose_cpu_bf16", "guard_bf16_convs", "Float32Conv2d"]

CPU_BF16_MODES = ("", "off", "on", "auto")
AUTO_MIN_SPEEDUP = 1.15     # auto takes bfloat16 only when a training pass is at least this much faster


def native_bf16() -> bool:
    """True when this CPU has bfloat16 arithmetic (AVX512_BF16 or AMX) that oneDNN uses."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_cpu_bf16(mode: str, budgeted: bool) -> str:
    """The mode a run with ``cpu_bf16=mode`` uses: the default ``""`` is ``auto`` when the run has a
    time budget and ``off`` when it does not; the others are themselves."""
    if mode not in CPU_BF16_MODES:
        raise ValueError(f"cpu_bf16 must be one of {CPU_BF16_MODES}, got {mode!r}")
    return mode or ("auto" if budgeted else "off")


def training_autocast(device: torch.device | str, bf16: bool) -> contextlib.AbstractContextManager:
    """The autocast context of a training step: CUDA's float16 ``amp`` is the caller's; on the CPU,
    bfloat16 when ``bf16``, else nothing."""
    if torch.device(device).type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    return contextlib.nullcontext()


def choose_cpu_bf16(mode: str, model: torch.nn.Module | None, batch_size: int, size: int,
                    rounds: int = 3) -> tuple[bool, str]:
    """Whether a CPU run with ``cpu_bf16=mode`` trains in bfloat16, and why (one line). ``auto``
    times forward + backward passes of a copy of ``model`` (the run's model is not touched: no
    BatchNorm statistics move) at ``batch_size`` x ``size`` px, float32 and bfloat16 interleaved,
    ``rounds`` each, and takes bfloat16 when its fastest pass is ``AUTO_MIN_SPEEDUP`` times
    float32's or better."""
    if mode not in ("on", "auto"):
        return False, "float32"
    native = native_bf16()
    if mode == "on":
        return True, "bfloat16 autocast" + ("" if native else " (this CPU has no native bfloat16: emulated, slower than float32)")
    if not native:
        return False, "float32 (auto: this CPU has no native bfloat16)"
    if model is None or not hasattr(model, "forward_raw"):
        return False, "float32 (auto: this model has no forward_raw to time)"
    with torch.random.fork_rng(devices=[]):
        fp32, bf16 = _interleaved(copy.deepcopy(model), batch_size, size, rounds)
    speedup = fp32 / bf16
    chosen = speedup >= AUTO_MIN_SPEEDUP
    verdict = "bfloat16 autocast" if chosen else "float32"
    return chosen, (f"{verdict} (auto: a training pass took {fp32 * 1e3:.0f} ms in float32, {bf16 * 1e3:.0f} ms in "
                    f"bfloat16: {speedup:.2f}x, {'at least' if chosen else 'under'} {AUTO_MIN_SPEEDUP}x)")


def _interleaved(model: torch.nn.Module, batch_size: int, size: int, rounds: int) -> tuple[float, float]:
    """The fastest of ``rounds`` training passes of ``model`` in float32 and in bfloat16, alternating."""
    best = {False: float("inf"), True: float("inf")}
    for _ in range(rounds):
        for bf16 in (False, True):
            with training_autocast("cpu", bf16):
                seconds = training_pass_seconds(model, batch_size, size, repeats=2) or float("inf")
            best[bf16] = min(best[bf16], seconds)
    return best[False], best[True]


BF16_GRAD_TOLERANCE = 0.05   # bfloat16's own gradient error is ~0.003-0.01 of the gradient's range here
TINY_MAP_CHECKS = 12         # draws per conv on feature maps of up to 64 pixels (a miss: < 0.5 ** 12)


class Float32Conv2d(torch.nn.Conv2d):
    """An ``nn.Conv2d`` that runs in float32 under CPU bfloat16 autocast (the same parameters and
    state dict): for the shapes whose bfloat16 backward is wrong in this torch build."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", enabled=False):
            return super().forward(input.float())


def _conv_inputs(model: torch.nn.Module, size) -> dict[str, tuple[int, ...]]:
    """Each ``nn.Conv2d``'s input shape (C, H, W) in a forward pass at ``size`` (px, or (h, w))."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(module, args, output) -> None:      # returns None: the output stays as it is
            shapes.setdefault(name, tuple(args[0].shape[1:]))
        return hook
    handles = [module.register_forward_hook(record(name))
               for name, module in model.named_modules() if isinstance(module, torch.nn.Conv2d)]
    device = next(model.parameters()).device
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model.forward_raw(torch.zeros(1, 3, *as_hw(size), device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return shapes


def _bf16_backward_is_right(conv: torch.nn.Conv2d, batch_size: int, shape: tuple[int, ...], seed: int = 0) -> bool:
    """Whether bfloat16 autocast's input and weight gradients of ``conv`` at (batch_size, *shape)
    agree with float32's on the same (bfloat16-rounded) values, within BF16_GRAD_TOLERANCE of
    float32's largest gradient, on random values drawn from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, *shape, generator=gen).bfloat16().float()
    w = conv.weight.detach().float().bfloat16().float()
    if not torch.isfinite(w).all():
        return True
    layout = torch.channels_last if conv.weight.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    grads = []
    for bf16 in (True, False):
        xi = x.clone().contiguous(memory_format=layout).requires_grad_()
        wi = w.clone().contiguous(memory_format=layout).requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = torch.nn.functional.conv2d(xi, wi, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        upstream = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1)).bfloat16().float()
        y.backward(upstream.to(y.dtype))
        grads.append((xi.grad.float(), wi.grad.float()))
    for got, want in zip(grads[0], grads[1]):
        scale = want.abs().max().clamp(min=1e-12)
        if not torch.isfinite(got).all() or float((got - want).abs().max() / scale) > BF16_GRAD_TOLERANCE:
            return False
    return True


def guard_bf16_convs(model: torch.nn.Module, batch_size: int, size) -> list[str]:
    """Checks every convolution of ``model`` (on the CPU) at the shapes a training pass at
    ``size`` (px, or (h, w)) and ``batch_size`` gives it, and turns the ones whose bfloat16 backward is wrong
    into :class:`Float32Conv2d`. Returns their names with their input shapes."""
    if not hasattr(model, "forward_raw"):
        return []
    batch_size = min(batch_size, 8)     # the wrong results depend on the map, not the batch; 8 keeps it cheap
    modules = dict(model.named_modules())
    verdicts: dict[tuple, bool] = {}
    kept = []
    for name, shape in _conv_inputs(model, size).items():
        conv = modules[name]
        key = (shape, tuple(conv.weight.shape), conv.stride, conv.padding, conv.dilation, conv.groups)
        if key not in verdicts:
            # the wrong results come from memory the kernel does not initialise: one check caught
            # the 1x1-input case 16 times in 20 and a 2x2 stride-3 case 10 in 20, so small maps
            # (cheap to check) are checked on TINY_MAP_CHECKS draws, larger ones twice
            checks = TINY_MAP_CHECKS if shape[1] * shape[2] <= 64 else 2
            verdicts[key] = all(_bf16_backward_is_right(conv, batch_size, shape, seed=2 * i) for i in range(checks))
        if not verdicts[key] and type(conv) is torch.nn.Conv2d:
            conv.__class__ = Float32Conv2d
            kept.append(f"{name} ({shape[1]}x{shape[2]} input, stride {conv.stride[0]})")
    return kept
