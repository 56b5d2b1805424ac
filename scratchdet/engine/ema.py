"""Weight EMA: an exponential moving average of the model's parameters, updated after every
optimizer step, that periodic evaluation, ``best_model.pt`` and ``model_final.pt`` use instead of
the raw weights (``--set ema=true``).

The decay ramps up from 0: ``decay_t = ema_decay * (1 - exp(-t / ema_warmup))`` after ``t``
updates, so the average follows the fast-moving early weights and averages over a window of about
``1 / (1 - decay_t)`` steps later on. Buffers (BatchNorm running statistics, counters) are copied
from the model, not averaged: the running statistics already are averages, of the raw weights'
activations. Under DDP the average shadows the unwrapped model, whose parameters are the same on
every rank after each step, so every rank's average is the same; the buffers are copied again when
the average is used, after the trainer averaged them over the ranks.
"""
from __future__ import annotations

import copy
import math

import torch

from .hooks import HookBase

__all__ = ["ModelEMA", "EMAHook"]


class ModelEMA:
    """A copy of ``model`` whose floating-point parameters follow the model's as an exponential
    moving average; ``updates`` counts the updates done (the ramp's ``t``)."""

    def __init__(self, model: torch.nn.Module, decay: float, warmup: float):
        self.decay, self.warmup = float(decay), float(warmup)
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    def decay_at(self, updates: int) -> float:
        """The decay of update number ``updates`` (1 for the first)."""
        if self.warmup <= 0:
            return self.decay
        return self.decay * (1.0 - math.exp(-updates / self.warmup))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = self.decay_at(self.updates)
        for avg, p in zip(self.module.parameters(), model.parameters()):
            if avg.is_floating_point():
                avg.mul_(d).add_(p.detach(), alpha=1.0 - d)
            else:
                avg.copy_(p)
        self.copy_buffers(model)

    @torch.no_grad()
    def copy_buffers(self, model: torch.nn.Module) -> None:
        for avg, b in zip(self.module.buffers(), model.buffers()):
            avg.copy_(b)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        self.module.load_state_dict(state["module"])


class EMAHook(HookBase):
    """Keeps a :class:`ModelEMA` of ``trainer.model``, updated after every step the optimizer
    took (a step skipped as non-finite is no update); checkpoints hold it, so a resumed run goes on
    with the same average. It is created from the model as it is when training starts (after any
    resume), or when a checkpoint's average is restored into it."""

    state_key = "ema"

    def __init__(self, decay: float, warmup: float):
        self.decay, self.warmup = decay, warmup
        self.ema: ModelEMA | None = None

    def _ensure(self) -> ModelEMA:
        if self.ema is None:
            self.ema = ModelEMA(self.trainer.model, self.decay, self.warmup)
        return self.ema

    def before_train(self) -> None:
        self._ensure()

    def after_step(self) -> None:
        if not self.trainer.step_record["skipped"]:
            self._ensure().update(self.trainer.model)

    def averaged_model(self) -> torch.nn.Module:
        """The average, with the model's current buffers (over ranks, once the trainer synced them)."""
        ema = self._ensure()
        ema.copy_buffers(self.trainer.model)
        return ema.module

    def state_dict(self) -> dict:
        ema = self._ensure()
        ema.copy_buffers(self.trainer.model)   # the buffers as checkpointed with the model
        return ema.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._ensure().load_state_dict(state)
