"""``time_budget``: a run that ends within a wall-clock budget, its final evaluation and saving
included, laying its length out to fit.

After a few settling steps (the first ones pay for loader start-up and kernel warm-up) the hook
measures the seconds per iteration, then plans the horizon: as many iterations as fit in what is
left of the budget after the evaluations and checkpoints still to come and a reserve for the final
evaluation and saves. The warm-up and the evaluation points keep their fraction of the config's
``max_iters``, and the cosine / multi-step schedule follows the planned length. It plans again when
the measured rate moves by more than 20% or the evaluation's cost is first measured, and it ends
the run at once when not even one more step would fit. Under DDP rank 0 decides and every rank
follows (one broadcast per step).
"""
from __future__ import annotations

import math
import statistics
import time
from collections import deque
from typing import Callable

import torch
import torch.distributed

from .hooks import EvaluationHook, HookBase, Horizon

__all__ = ["TimeBudgetHook", "plan_iterations"]


def plan_iterations(iteration: int, seconds_left: float, seconds_per_iter: float, eval_seconds: float,
                    save_seconds: float, evals_ahead: Callable[[int], int], ckpt_every: int) -> int:
    """The largest horizon (total iterations) whose remaining steps, periodic evaluations and
    checkpoints fit in ``seconds_left`` (the final evaluation and saves already taken out); at least
    ``iteration``, which ends the run now. ``evals_ahead(horizon)``: the periodic evaluations still
    to come on that horizon."""
    def cost(horizon: int) -> float:
        evals = evals_ahead(horizon)
        ckpts = max(0, (horizon - 1) // ckpt_every - iteration // ckpt_every) if ckpt_every > 0 else 0
        return (horizon - iteration) * seconds_per_iter + evals * eval_seconds + ckpts * save_seconds

    if seconds_left <= 0:
        return iteration
    horizon = iteration + int(seconds_left / seconds_per_iter)
    # fewer steps leave room for the evaluations and checkpoints among them
    while horizon > iteration and cost(horizon) > seconds_left:
        over = cost(horizon) - seconds_left
        horizon -= max(1, int(over / seconds_per_iter))
    # the evaluation points move with the horizon, so a step down can overshoot: climb back
    while cost(horizon + 1) <= seconds_left:
        horizon += 1
    return max(iteration, horizon)


class TimeBudgetHook(HookBase):
    """Plans ``trainer.horizon`` to end the run within ``budget`` seconds of training time (across
    resumes: a checkpoint carries the seconds spent). ``clock`` is injectable for tests."""

    state_key = "time_budget"

    def __init__(self, budget: float, clock: Callable[[], float] = time.monotonic, settle_steps: int = 2,
                 measure_steps: int = 3, replan_change: float = 0.2, window: int = 9):
        self.budget, self.clock = float(budget), clock
        self.settle_steps, self.measure_steps, self.replan_change = settle_steps, measure_steps, replan_change
        self.spent_before = 0.0               # seconds earlier processes of this run used
        self.planned: int | None = None       # the planned horizon
        self.seconds_per_iter: float | None = None   # the rate the plan used
        self.eval_seconds: float | None = None       # measured, once an evaluation ran
        self.save_seconds: float | None = None       # measured, once a checkpoint was written
        self.replans = 0                      # plans after the first
        self.evals_done = 0                   # periodic evaluations run so far
        self._samples: deque[float] = deque(maxlen=window)
        self._t_start: float | None = None    # the clock when this process started training
        self._t_last = 0.0
        self._steps = 0                       # steps timed in this process
        self._cycle_has: str | None = None    # "eval" / "ckpt": what the after_step hooks of the last step did

    # ------------------------------------------------------------------ timing
    def elapsed(self) -> float:
        """Training seconds of the run so far (earlier processes' included)."""
        if self._t_start is None:
            return self.spent_before
        return self.spent_before + self.clock() - self._t_start

    def before_train(self) -> None:
        self._t_start = self._t_last = self.clock()
        self._steps, self._cycle_has = 0, None
        self._samples.clear()
        horizon = self.trainer.horizon
        if self.planned is None:     # until the first plan: the config's, long enough to measure the
            # rate, without periodic evaluations
            self.trainer.horizon = Horizon(max(horizon.max_iters, self.trainer.iteration + self.settle_steps
                                               + self.measure_steps + 1), horizon.warmup_iters, ())

    def _measured_rate(self) -> float | None:
        return statistics.median(self._samples) if self._samples else None

    def _record(self, seconds: float) -> bool:
        """Files the last cycle's seconds (a step, its loading, and the hooks after it); True when
        it measured the evaluation's cost for the first time."""
        self._steps += 1
        if self._steps <= self.settle_steps:
            return False
        rate = self._measured_rate()
        if self._cycle_has is None or rate is None:
            self._samples.append(seconds)
            return False
        extra = max(0.0, seconds - rate)
        if self._cycle_has == "eval":
            first = self.eval_seconds is None
            self.eval_seconds = extra
            return first
        self.save_seconds = extra
        return False

    # ------------------------------------------------------------------ planning
    def eval_points(self, horizon: int) -> tuple[int, ...]:
        """The periodic evaluations still to come on ``horizon``: the config's points (every
        eval_every of max_iters) at the same fractions of it, those already run left out."""
        cfg, it = self.trainer.cfg, self.trainer.iteration
        if cfg.eval_every <= 0 or not any(isinstance(h, EvaluationHook) for h in self.trainer.hooks):
            return ()
        count = (cfg.max_iters - 1) // cfg.eval_every
        points = (round(k * cfg.eval_every * horizon / cfg.max_iters) for k in range(self.evals_done + 1, count + 1))
        return tuple(p for p in points if it < p < horizon)

    def _eval_seconds(self, rate: float) -> float:
        """Measured, or before the first evaluation: half a training step's time per batch of the
        validation images (a forward pass is about a third of a step; the rest pays for NMS and
        scoring)."""
        if self.eval_seconds is not None:
            return self.eval_seconds
        val, cfg = self.trainer.val_set, self.trainer.cfg
        if val is None:
            return 0.0
        images = min(len(val), cfg.eval_max_images or len(val))
        return 0.5 * rate * math.ceil(images / cfg.batch_size)

    def _reserve(self, rate: float) -> float:
        """The final evaluation, the final checkpoint and model_final.pt, and a margin."""
        save = self.save_seconds if self.save_seconds is not None else rate
        return self._eval_seconds(rate) + 2 * save + max(0.02 * self.budget, rate)

    def _plan(self, rate: float) -> int:
        cfg, it = self.trainer.cfg, self.trainer.iteration
        save = self.save_seconds if self.save_seconds is not None else rate
        left = self.budget - self.elapsed() - self._reserve(rate)
        return plan_iterations(it, left, rate, self._eval_seconds(rate), save,
                               lambda horizon: len(self.eval_points(horizon)), cfg.ckpt_every)

    def scaled(self, iters: int, horizon: int) -> int:
        """``iters`` of the config's max_iters at the same fraction of ``horizon`` (0 stays 0)."""
        if iters <= 0:
            return 0
        return max(1, round(iters * horizon / self.trainer.cfg.max_iters))

    def warmup(self, horizon: int) -> int:
        """The warm-up on ``horizon`` iterations: its fraction of max_iters, but never fewer steps than
        the config's warm-up (unless the run is shorter than three of them): warm-up is there to get
        the first steps at a large lr through safely, a number of steps, not a share of the run. A
        3-minute demo-recipe run (~300 steps) with its warm-up scaled down to 38 steps stalled at
        0.002 mAP where one with 100 reached 0.64 (the same data, 1 thread, AMD EPYC Zen 4)."""
        warmup = self.trainer.cfg.warmup_iters
        if warmup <= 0:
            return 0
        return max(1, min(max(warmup, self.scaled(warmup, horizon)), horizon // 3))

    def _apply(self, horizon: int) -> None:
        """Lay the run out on ``horizon`` iterations: the schedule's length and warm-up, and the
        evaluation points."""
        self.planned = horizon
        self.trainer.horizon = Horizon(horizon, self.warmup(horizon), self.eval_points(horizon))

    def _agree(self, horizon: int) -> int:
        """Rank 0's horizon on every rank."""
        dist = self.trainer.dist
        if not dist.enabled:
            return horizon
        t = torch.tensor([horizon], dtype=torch.int64, device=dist.device)
        torch.distributed.broadcast(t, src=0)
        return int(t.item())

    def after_step(self) -> None:
        trainer = self.trainer
        now = self.clock()
        first_eval = self._record(now - self._t_last)
        self._t_last = now
        horizon = trainer.horizon.max_iters
        rate = self._measured_rate()
        # the first plan once the rate is measured: at the same step on every rank
        first_plan = self.planned is None and rate is not None and len(self._samples) >= self.measure_steps
        rate_moved = (self.planned is not None and rate is not None and self.seconds_per_iter is not None
                      and abs(rate / self.seconds_per_iter - 1) > self.replan_change)
        if first_plan or rate_moved or (first_eval and self.planned is not None):
            self.replans += not first_plan
            self.seconds_per_iter = rate
            horizon = self._plan(rate)
        # not one more step fits (a slow-down between plans, or a budget shorter than the measuring)
        latest = rate or (now - self._t_start) / max(1, self._steps)
        if self.elapsed() + latest + self._reserve(latest) > self.budget:
            horizon = trainer.iteration
        horizon = self._agree(horizon)
        if horizon != trainer.horizon.max_iters or first_plan:
            self._apply(horizon)
        it, every = trainer.iteration, trainer.cfg.ckpt_every
        if it in (trainer.horizon.eval_points or ()) and it < trainer.horizon.max_iters:
            self._cycle_has = "eval"               # the evaluation hook runs it after this hook
            self.evals_done += 1
        elif every and it % every == 0:
            self._cycle_has = "ckpt"
        else:
            self._cycle_has = None

    def after_train(self) -> None:
        self.trainer.summary["time_budget"] = {
            "budget_seconds": self.budget, "elapsed_seconds": round(self.elapsed(), 3),
            "iterations": self.trainer.iteration, "planned_iterations": self.planned,
            "seconds_per_iteration": self.seconds_per_iter, "eval_seconds": self.eval_seconds,
            "replans": self.replans}

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        return {"spent": self.elapsed(), "planned": self.planned, "seconds_per_iter": self.seconds_per_iter,
                "eval_seconds": self.eval_seconds, "save_seconds": self.save_seconds, "replans": self.replans,
                "evals_done": self.evals_done}

    def load_state_dict(self, state: dict) -> None:
        self.spent_before = float(state["spent"])
        self.seconds_per_iter, self.eval_seconds = state["seconds_per_iter"], state["eval_seconds"]
        self.save_seconds, self.replans = state["save_seconds"], int(state["replans"])
        self.evals_done = int(state.get("evals_done", 0))
        if state["planned"] is not None:
            self._apply(int(state["planned"]))
