"""What a network costs, apart from its speed: parameters, FLOPs, and the peak memory of one training
step and of one inference batch.

FLOPs are ``torch.utils.flop_counter.FlopCounterMode``'s count of the network's forward at batch 1
(multiply and add counted as two, convs and matmuls only). Peak memory on CUDA is the allocator's
``max_memory_allocated``; on a CPU, which keeps no such count, :class:`PeakMemory` follows every
tensor the operators allocate (a dispatch mode: each new storage is counted when made and uncounted
when its last tensor is freed), plus the weights, gradients and optimizer state alive at the start.
"""
from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_params", "count_flops", "PeakMemory", "inference_peak_bytes", "training_peak_bytes"]


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model, image_size: tuple[int, int]) -> int:
    """FLOPs of ``model.forward_raw`` on one image of ``image_size`` (height, width)."""
    x = torch.zeros(1, 3, *image_size, device=model.priors.device)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.forward_raw(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def _tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is None:
            continue
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


class PeakMemory(TorchDispatchMode):
    """Bytes of the tensors alive while it is entered, and their peak (``peak``), counting from
    ``base`` (what was alive before: weights, ...)."""

    def __init__(self, base: int = 0):
        super().__init__()
        self.current = self.peak = int(base)
        self._live: dict[int, list[int]] = {}     # storage address -> [bytes, tensors alive]

    def _release(self, key: int) -> None:
        entry = self._live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self._live[key]
            self.current -= entry[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key == 0:
                continue
            entry = self._live.get(key)
            if entry is None:
                entry = self._live[key] = [storage.nbytes(), 0]
                self.current += entry[0]
                self.peak = max(self.peak, self.current)
            entry[1] += 1
            weakref.finalize(t, self._release, key)
        return out


def _measure(device: torch.device, base: int, run) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        run()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - start + base)
    with PeakMemory(base) as tracker:
        run()
    return tracker.peak


def inference_peak_bytes(model, batch: torch.Tensor) -> int:
    """Peak bytes of ``model(batch)`` in eval mode (network + detect), the weights included."""
    model.eval()
    base = _tensor_bytes([*model.parameters(), *model.buffers()])

    def run():
        with torch.inference_mode():
            model(batch)

    return _measure(batch.device, base, run)


def training_peak_bytes(model, batch: torch.Tensor, targets: dict, lr: float = 0.01) -> int:
    """Peak bytes of one SGD step with momentum (forward, loss, backward, update) of ``model`` on
    ``batch``: weights, activations kept for the backward, gradients and the momentum buffers.
    ``model`` is changed by the step: pass a copy."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    base = _tensor_bytes([*model.parameters(), *model.buffers()])

    def run():
        model(batch, targets)["loss"].backward()
        optimizer.step()

    return _measure(batch.device, base, run)
