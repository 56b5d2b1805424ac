"""The training loop's hooks: what runs around each step, each with its own resumable state.

The loop (:class:`scratchdet.engine.trainer.Trainer`) only loads batches and runs the step; the
rest is a hook. For a run it calls, on every hook in order::

    before_train()                          after any resume
    for each step: before_step(); <the step>; after_step()
    after_train()                           a run that ended normally (finished, stopped early or
                                            interrupted by SIGTERM/Ctrl-C), in reverse order
    teardown()                              always, also after an error, in reverse order

During ``after_step`` ``trainer.iteration`` counts the steps done (the one just run included)
and ``trainer.step_record`` holds the step's record (loss, lr, grad_norm, skipped, ...), which
hooks may extend before the training log writes it. A hook with state returns it from
``state_dict()`` (plain data: numbers, strings, lists, dicts, tensors): every checkpoint saves
it under ``state_key`` and ``--resume`` hands it back to ``load_state_dict``.

The default hooks, in order: the time budget (``time_budget``, engine/time_budget.py: it plans
``trainer.horizon``, which the loop and the hooks below follow), the LR schedule, the divergence
guard, the training log, the progress bar, the weight EMA (``ema``, engine/ema.py), periodic
evaluation, then the user's hooks, and the checkpointer last (so a checkpoint holds every other
hook's state after the step; and, in the reversed ``after_train``, the final checkpoint is written
before the final evaluation, as a resumed run expects).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..evaluation.evaluate import evaluate_model
from ..models.io import save as save_model
from ..structures.errors import CheckpointError
from ..structures.files import atomic_save
from .checkpoint import checkpoint_path, prune_checkpoints
from .distributed import barrier
from .schedule import lr_factor
from .tiled_eval import evaluate_tiled
from .training_log import GradFluctuation

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["Horizon", "HookBase", "LRScheduleHook", "NonFiniteGuard", "NonFiniteTrainingError", "TrainingLogHook",
           "ProgressHook", "EvaluationHook", "CheckpointHook", "hook_state_key", "has_state"]


@dataclass
class Horizon:
    """The run's length, where its warm-up ends and its periodic evaluations, which the loop and the
    hooks follow: the config's (``eval_points`` None: every ``eval_every``), or what a
    ``TimeBudgetHook`` planned."""

    max_iters: int
    warmup_iters: int
    eval_points: tuple[int, ...] | None = None


class NonFiniteTrainingError(RuntimeError):
    """Raised after `max_bad_steps` non-finite steps in a row; ``iteration`` is the last one's index."""

    def __init__(self, message: str, iteration: int):
        super().__init__(message)
        self.iteration = iteration


class HookBase:
    """Override the events you need; a hook with state also overrides ``state_dict`` and
    ``load_state_dict``. ``trainer`` is set by ``Trainer.register_hooks`` (a weak proxy, so the
    hook does not keep the trainer alive)."""

    trainer: "Trainer"
    #: where a checkpoint keeps this hook's state; None: the class name
    state_key: str | None = None

    def before_train(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def teardown(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def has_state(hook: HookBase) -> bool:
    """Whether the hook keeps state across a resume (it overrides ``state_dict``)."""
    return type(hook).state_dict is not HookBase.state_dict


def hook_state_key(hook: HookBase) -> str:
    return hook.state_key or type(hook).__name__


class LRScheduleHook(HookBase):
    """Sets the learning rate of the coming step: linear warmup, then multi-step or cosine decay.
    A function of the iteration and ``trainer.horizon`` (which a time budget restores with its own
    state on resume), so it has no state to save."""

    def before_step(self) -> None:
        cfg, horizon = self.trainer.cfg, self.trainer.horizon
        lr = cfg.lr * lr_factor(self.trainer.iteration, horizon.max_iters, horizon.warmup_iters, cfg.warmup_factor,
                                cfg.schedule, cfg.milestones, cfg.gamma)
        for group in self.trainer.optimizer.param_groups:
            group["lr"] = lr


class NonFiniteGuard(HookBase):
    """Counts the steps the loop skipped as non-finite and aborts the run after ``max_bad_steps``
    of them in a row, naming the last one."""

    state_key = "nonfinite_guard"

    def __init__(self, max_bad_steps: int):
        self.max_bad_steps = max_bad_steps
        self.bad_in_row, self.skipped = 0, 0

    def after_step(self) -> None:
        rec = self.trainer.step_record
        if not rec["skipped"]:
            self.bad_in_row = 0
            return
        self.bad_in_row += 1
        self.skipped += 1
        if self.bad_in_row >= self.max_bad_steps:
            step = self.trainer.iteration - 1        # the step's index, counted from 0
            raise NonFiniteTrainingError(
                f"training diverged: {self.bad_in_row} non-finite steps in a row, the last at iteration "
                f"{step} (loss={rec['loss']}, grad_norm={rec['grad_norm']}). Lower the lr "
                f"(now {rec['lr']:g}), enable BN in backbone and head, or set grad_clip.", step)

    def state_dict(self) -> dict:
        return {"bad_in_row": self.bad_in_row, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.bad_in_row, self.skipped = int(state["bad_in_row"]), int(state["skipped"])


class TrainingLogHook(HookBase):
    """Adds the gradient-norm fluctuation (the paper's Figure 1c) and images/s to each step's
    record and appends it to ``metrics.jsonl`` (main process). images/s is measured over the
    steps since the last ``log_every`` boundary."""

    state_key = "training_log"

    def __init__(self, log_every: int):
        self.log_every = log_every
        self.fluct = GradFluctuation()
        self._t_last, self._images = 0.0, 0

    def before_train(self) -> None:
        self._t_last, self._images = time.perf_counter(), 0

    def after_step(self) -> None:
        trainer, rec = self.trainer, self.trainer.step_record
        rec["grad_fluct"] = float("nan") if rec["skipped"] else self.fluct.update(rec["grad_norm"])
        self._images += trainer.step_images
        now = time.perf_counter()
        rec["images_per_s"] = self._images / max(now - self._t_last, 1e-9)
        if trainer.dist.is_main:
            trainer.training_log.write(rec)
        if trainer.iteration % self.log_every == 0 or trainer.iteration == trainer.horizon.max_iters:
            self._t_last, self._images = now, 0

    def state_dict(self) -> dict:
        return {"grad_fluct": self.fluct.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.fluct.load_state_dict(state["grad_fluct"])


class ProgressHook(HookBase):
    """The progress bar (loss, lr, images/s every ``log_every`` steps, ETA)."""

    def __init__(self, enabled: bool, log_every: int):
        self.enabled, self.log_every = enabled, log_every
        self.bar = None

    def before_train(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=self.trainer.horizon.max_iters, initial=self.trainer.iteration, disable=not self.enabled,
                        dynamic_ncols=True, desc="train", unit="it")

    def after_step(self) -> None:
        it, rec, total = self.trainer.iteration, self.trainer.step_record, self.trainer.horizon.max_iters
        if self.bar.total != total:          # a time budget re-planned the run
            self.bar.total = total
        if it % self.log_every == 0 or it == total:
            self.bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{rec['lr']:.4g}",
                                 img_s=f"{rec['images_per_s']:.1f}", refresh=False)
        self.bar.update(1)

    def teardown(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class EvaluationHook(HookBase):
    """VOC07 mAP (and COCO AP on a COCO set) every ``eval_every`` steps and at the end, written to
    the training log; ``best_model.pt`` whenever the mAP improves."""

    state_key = "evaluation"

    def __init__(self, eval_every: int):
        self.eval_every = eval_every
        self.best_map = -1.0
        self.history: list[tuple[int, float]] = []

    def evaluate(self) -> dict:
        """Evaluate now (every rank calls it; rank 0 evaluates); {} on the other ranks or without a
        validation set."""
        trainer, cfg = self.trainer, self.trainer.cfg
        result = {}
        trainer.sync_buffers()
        if trainer.dist.is_main and trainer.val_set is not None:
            model = trainer.evaluation_model()      # the weight EMA when it is on
            if cfg.train_tile:      # trained on tiles: evaluated by tiled inference on the whole images
                result = evaluate_tiled(model, trainer.val_set, cfg.train_tile, max_images=cfg.eval_max_images,
                                        batch_size=cfg.batch_size)
            else:
                result = evaluate_model(model, trainer.val_set, batch_size=cfg.batch_size, device=trainer.device,
                                        max_images=cfg.eval_max_images, workers=trainer.workers,
                                        memory_format=trainer.memory_format)
            self.history.append((trainer.iteration, result["map"]))
            record = {"iter": trainer.iteration, "map": result["map"], "eval": True}
            if "coco" in result:
                record["coco"] = result["coco"]
            trainer.training_log.write(record)
            if result["map"] > self.best_map:
                self.best_map = result["map"]
                save_model(model, os.path.join(cfg.out_dir, "best_model.pt"))
        barrier(trainer.dist)
        return result

    def after_step(self) -> None:
        it, horizon = self.trainer.iteration, self.trainer.horizon
        due = it in horizon.eval_points if horizon.eval_points is not None else \
            self.eval_every and it % self.eval_every == 0
        if due and it < horizon.max_iters:
            result = self.evaluate()
            if result:
                from tqdm import tqdm

                tqdm.write(f"iter {it}: VOC07 mAP {result['map']:.4f}")   # below the progress bar

    def after_train(self) -> None:
        trainer = self.trainer
        if trainer.interrupted:
            return
        if trainer.finished:
            result = self.evaluate()
            if result:
                trainer.summary["map"] = result["map"]
                trainer.summary["ap"] = result["ap"]
        trainer.summary["best_map"] = self.best_map

    def state_dict(self) -> dict:
        return {"best_map": self.best_map, "history": [list(x) for x in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.best_map = float(state["best_map"])
        self.history = [(int(it), float(m)) for it, m in state["history"]]


class CheckpointHook(HookBase):
    """Training checkpoints (``checkpoints/iter_N.pt`` and ``last.pt``) every ``ckpt_every`` steps
    and when the run ends, keeping the newest ``keep_last``; ``model_final.pt`` when it finished.

    Every write is atomic, so a crash or a full disk leaves the earlier checkpoints intact; a full
    disk raises CheckpointError naming the folder and the last good checkpoint."""

    def __init__(self, ckpt_every: int, keep_last: int):
        self.ckpt_every, self.keep_last = ckpt_every, keep_last
        self.last_good: str | None = None

    def before_train(self) -> None:
        self.last_good = self.last_good or self.trainer.resumed_from   # named if the disk fills up

    def save(self) -> str | None:
        """Write a checkpoint of the trainer now (every rank calls it; rank 0 writes)."""
        trainer = self.trainer
        trainer.sync_buffers()
        if not trainer.dist.is_main:
            return None
        out_dir = trainer.cfg.out_dir
        path = checkpoint_path(out_dir, trainer.iteration)
        state = trainer.state_dict()
        try:
            atomic_save(state, path)
            self.last_good = path
            atomic_save(state, os.path.join(out_dir, "last.pt"))
        except CheckpointError as exc:             # the disk is full (atomic_save's only CheckpointError)
            raise CheckpointError(f"{exc}; the last good checkpoint is {self.last_good or 'none yet'}") from None
        prune_checkpoints(out_dir, self.keep_last)
        return path

    def after_step(self) -> None:
        if self.ckpt_every and self.trainer.iteration % self.ckpt_every == 0:
            self.save()

    def after_train(self) -> None:
        trainer = self.trainer
        self.save()
        barrier(trainer.dist)
        if not trainer.dist.is_main:
            return
        if trainer.interrupted:
            print(f"interrupted at iteration {trainer.iteration}; checkpoint saved in {trainer.cfg.out_dir} "
                  f"(resume with --resume)")
        elif trainer.finished:
            save_model(trainer.evaluation_model(), os.path.join(trainer.cfg.out_dir, "model_final.pt"))
