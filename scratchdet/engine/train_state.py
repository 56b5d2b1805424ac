"""What a checkpoint holds, saved and restored in this one place: the loop's position (iteration,
epoch, batch within the epoch: the sampler's position), the model, the optimizer, the AMP grad
scaler, every hook's state and the global RNG states. A run killed at any point and resumed from
it ends with the same weights as an uninterrupted one."""
from __future__ import annotations

from typing import Any, Callable

import torch

from .checkpoint import rng_state, set_rng_state
from .hooks import EvaluationHook, HookBase, NonFiniteGuard, TrainingLogHook, has_state, hook_state_key

FORMAT = "scratchdet.train_state"
VERSION = 2
POSITION = ("iteration", "epoch", "batch_in_epoch")   # the loop's position, saved at the top level


class _GlobalRNG:
    """Python's, NumPy's and torch's (CPU and CUDA) global generators."""

    def state_dict(self) -> dict:
        return rng_state()

    def load_state_dict(self, state: dict) -> None:
        set_rng_state(state)


class _HookStates:
    """The state of each hook that has one, under its ``state_key``. A hook the checkpoint has no
    state for (one added on resume) starts fresh; a saved state no hook claims is ignored."""

    def __init__(self, hooks: list[HookBase]):
        self.hooks = [h for h in hooks if has_state(h)]

    def state_dict(self) -> dict:
        return {hook_state_key(h): h.state_dict() for h in self.hooks}

    def load_state_dict(self, state: dict) -> None:
        for hook in self.hooks:
            if hook_state_key(hook) in state:
                hook.load_state_dict(state[hook_state_key(hook)])


class TrainState:
    """The trainer's resumable state. ``describe`` returns what the checkpoint records about the run
    without restoring it (model config, classes, training options): resume checks it."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 hooks: list[HookBase], describe: Callable[[], dict]):
        self.iteration, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.model, self.optimizer, self.scaler, self.hooks, self.describe = model, optimizer, scaler, hooks, describe

    def _parts(self) -> dict[str, Any]:
        # restored in this order; the RNG states last, so nothing restored after them draws from them
        return {"model": self.model, "optimizer": self.optimizer, "scaler": self.scaler,
                "hooks": _HookStates(self.hooks), "rng": _GlobalRNG()}

    def state_dict(self) -> dict:
        state = {"format": FORMAT, "version": VERSION, **{k: getattr(self, k) for k in POSITION}}
        state.update({name: part.state_dict() for name, part in self._parts().items()})
        state.update(self.describe())
        return state

    def load_state_dict(self, ckpt: dict) -> None:
        ckpt = upgrade(ckpt)
        for key in POSITION:
            setattr(self, key, int(ckpt[key]))
        for name, part in self._parts().items():
            part.load_state_dict(ckpt[name])


def upgrade(ckpt: dict) -> dict:
    """A checkpoint of the version-1 format (hook states at the top level) in this one's layout."""
    if "hooks" in ckpt:
        return ckpt
    hooks = {TrainingLogHook.state_key: {"grad_fluct": ckpt.get("fluct", {})},
             NonFiniteGuard.state_key: {"bad_in_row": ckpt.get("bad_in_row", 0), "skipped": ckpt.get("skipped", 0)},
             EvaluationHook.state_key: {"best_map": ckpt.get("best_map", -1.0), "history": ckpt.get("history_map", [])}}
    return {**ckpt, "hooks": hooks}
