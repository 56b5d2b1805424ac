"""The from-scratch training loop: SGD + warmup + multistep/cosine, AMP on CUDA, and DDP through
torchrun. The loop loads batches and runs the step; the LR schedule, the non-finite guard, the
training log (JSONL, with the paper's gradient statistics), the progress bar, periodic evaluation
and the atomic, resumable checkpoints are hooks (``engine/hooks.py``); users add their own with
``Trainer(cfg, hooks=[...])`` or :meth:`Trainer.register_hooks`."""
from __future__ import annotations

import contextlib
import math
import os
import signal
import time
import warnings
import weakref
from typing import Iterable, Iterator

import torch
import torch.distributed
from torch.utils.data import DataLoader

from ..data import collate_detection
from ..models import build_model
from ..models.layers import is_norm, use_fused_batch_norm
from ..models.config import DETECT_DEFAULTS, SSDConfig
from ..structures.errors import CheckpointError, ConfigError
from ..structures.image import as_hw
from .checkpoint import load_checkpoint, load_newest_checkpoint
from .config import TrainConfig, parse_duration
from .data_fit import fit_to_data, write_data_fit
from .data_setup import build_datasets, model_config
from .distributed import DistInfo, broadcast_flag, broadcast_int, init_distributed
from .ema import EMAHook
from .hooks import (CheckpointHook, EvaluationHook, HookBase, Horizon, LRScheduleHook, NonFiniteGuard,
                    NonFiniteTrainingError, ProgressHook, TrainingLogHook, has_state, hook_state_key)
from .precision import choose_cpu_bf16, guard_bf16_convs, resolve_cpu_bf16, training_autocast
from .sampler import ResumableBatchSampler
from .time_budget import TimeBudgetHook
from .train_state import TrainState
from .training_log import JSONLWriter

__all__ = ["Trainer", "NonFiniteTrainingError", "param_groups"]


def param_groups(model: torch.nn.Module, weight_decay: float, no_decay_bn_bias: bool) -> list[dict]:
    """Weight decay on conv/linear weights; optionally none on BN parameters and biases."""
    if not no_decay_bn_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            (no_decay if is_norm(module) or name == "bias" else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Trainer:
    """Trains ``cfg`` to ``cfg.max_iters`` (or, with ``time_budget``, as far as fits: ``horizon``); ``hooks`` are the user's, run after the default hooks
    (and before the checkpointer, so checkpoints hold their state)."""

    def __init__(self, cfg: TrainConfig, dist_info: DistInfo | None = None, device: str | None = None,
                 progress: bool = True, train_set=None, val_set=None, classes=None,
                 hooks: Iterable[HookBase] = ()):
        self.cfg = cfg
        self.dist = dist_info or init_distributed(device)
        self.device = self.dist.device
        self.progress = progress and self.dist.is_main
        torch.manual_seed(cfg.seed)
        if train_set is None:
            train_set, val_set, classes = build_datasets(cfg, self.dist)
        self.train_set, self.val_set, self.classes = train_set, val_set, classes
        self.model = self._build_model(train_set)
        self.net = self.model
        if self.dist.enabled:
            # device_ids=None: DDP leaves the inputs where they are, so the targets reach the model on
            # the host, where it checks them before its own device copy
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=None)
        self.optimizer = torch.optim.SGD(param_groups(self.model, cfg.weight_decay, cfg.no_decay_bn_bias),
                                         lr=cfg.lr, momentum=cfg.momentum)
        self.use_amp = cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        # the fast path: (epoch, index) pairs, so that one DataLoader with persistent workers serves
        # every epoch; the stock path rebuilds the loader each epoch after set_epoch
        self.sampler = ResumableBatchSampler(len(train_set), cfg.batch_size, seed=cfg.seed, shuffle=True,
                                             rank=self.dist.rank, world_size=self.dist.world_size,
                                             with_epoch=cfg.fast_kernels)
        self._persistent_loader = None
        self.training_log = JSONLWriter(os.path.join(cfg.out_dir, "metrics.jsonl"))
        self.hooks: list[HookBase] = []
        self.horizon = Horizon(cfg.max_iters, cfg.warmup_iters)   # a TimeBudgetHook re-plans it
        meta = {"model_config": self.model.config.to_dict(), "classes": list(self.classes)}   # plain data: weights_only
        self.state = TrainState(self.model, self.optimizer, self.scaler, self.hooks,
                                describe=lambda config=cfg: {**meta, "train_config": config.to_dict()})
        self.step_record: dict = {}     # the running step's record, for the hooks' after_step
        self.step_images = 0            # images in the running step, over all ranks
        self.summary: dict = {}         # what train() returns; hooks add to it in after_train
        self.resumed_from: str | None = None
        self._stop_signal = None
        self.register_hooks(self.default_hooks())
        self.register_hooks(hooks)

    def make_model(self, num_classes: int, overrides: dict | None = None) -> torch.nn.Module:
        """The untrained network: ``cfg.model`` with ``overrides`` (default: ``cfg.model_overrides``;
        the data fit adds its image size and priors to them). A subclass may build another."""
        overrides = self.cfg.model_overrides if overrides is None else overrides
        return build_model(self.cfg.model, num_classes=num_classes, **overrides)

    def _build_model(self, train_set) -> torch.nn.Module:
        cfg = self.cfg
        def build(overrides: dict) -> torch.nn.Module:
            return self.make_model(len(self.classes) + 1, overrides)

        # image_size=auto, the priors' recall, priors=auto (engine/data_fit.py); the defaults change nothing
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.bf16, self.precision, self.cpu_bf16 = self._choose_precision(build)
        model, self.data_fit = fit_to_data(cfg, train_set, self.val_set, build,
                                           log=print if self.dist.is_main else None,
                                           prepare=self._training_layout, agree=lambda size: broadcast_int(size, self.dist),
                                           timing_context=self._autocast)
        model = self._training_layout(model)
        if self.bf16:
            kept = guard_bf16_convs(model, cfg.batch_size, model.config.image_size)
            if kept:
                self.precision += (f"; {len(kept)} conv(s) kept in float32, their bfloat16 backward being wrong in this "
                                   f"torch build: {', '.join(kept)}")
        if self.cpu_bf16 != "off" and self.dist.is_main:
            print(f"precision: {self.precision}")
        model.class_names = list(self.classes)  # saved with the weights by scratchdet.save
        cached = bool(cfg.fast_kernels and cfg.cache_images and hasattr(train_set, "cache_images")
                      and train_set.cache_images(int(cfg.cache_max_mb) << 20))
        self.workers = self.loader_workers(cfg, cached)
        self._check_sync_batch_norm(model)
        return model

    def _choose_precision(self, build) -> tuple[bool, str, str]:
        """(whether this CPU run trains in bfloat16 autocast, the line that says why, the resolved
        ``cpu_bf16`` mode: "off" / "on" / "auto"): ``cpu_bf16``
        (engine/precision.py); ``auto`` times a throwaway model at the preset's size, and rank 0's
        measurement decides on every rank; the default ``""`` is ``auto`` under a time budget, else
        ``off``. CUDA runs keep ``amp`` (float16) and ignore it."""
        cfg = self.cfg
        mode = resolve_cpu_bf16(cfg.cpu_bf16, budgeted=parse_duration(cfg.time_budget) is not None)
        if torch.device(self.device).type != "cpu":
            return False, "float16 autocast (amp)" if cfg.amp else "float32", "off"
        probe = None
        if mode == "auto":
            with torch.random.fork_rng(devices=[]):      # the run's random state untouched
                probe = self._training_layout(build(dict(cfg.model_overrides)))
        size = min(as_hw(model_config(cfg).image_size))
        chosen, why = choose_cpu_bf16(mode, probe, cfg.batch_size, size)
        agreed = bool(broadcast_int(int(chosen), self.dist))
        if agreed != chosen:
            why = f"{'bfloat16 autocast' if agreed else 'float32'} (rank 0's measurement)"
        return agreed, why, mode

    def _autocast(self):
        """The autocast context of a training pass: float16 with CUDA's ``amp``, bfloat16 on a CPU
        run that chose it, else none."""
        kind = torch.device(self.device).type
        if kind == "cpu":
            return training_autocast("cpu", self.bf16)
        # from cfg, not self.use_amp: image_size=auto's budget check calls this before that is set
        return torch.autocast(kind, enabled=self.cfg.amp and kind == "cuda")

    def _training_layout(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` on the run's device, in its memory format, with the fused BN path when
        ``fast_kernels`` on a CPU (off, and on CUDA: the stock BatchNorm / add / ReLU ops)."""
        model = model.to(self.device)
        # On an H200 the fused kernel's forward + backward took 1.25-2.3x cuDNN's BN + ReLU
        # (benchmarks/RESULTS.md, GPU), so CUDA runs keep the stock ops.
        use_fused_batch_norm(model, self.cfg.fast_kernels and torch.device(self.device).type == "cpu")
        return model.to(memory_format=self.memory_format)

    def default_hooks(self) -> list[HookBase]:
        cfg = self.cfg
        budget = parse_duration(cfg.time_budget)
        # the budget first: it times each step before the other hooks' after_step (evaluation,
        # checkpoints) run; the EMA before the evaluation and the checkpointer that use it
        return [*([TimeBudgetHook(budget)] if budget else []), LRScheduleHook(), NonFiniteGuard(cfg.max_bad_steps),
                TrainingLogHook(cfg.log_every), ProgressHook(self.progress, cfg.log_every),
                *([EMAHook(cfg.ema_decay, cfg.ema_warmup)] if cfg.ema else []), EvaluationHook(cfg.eval_every),
                CheckpointHook(cfg.ckpt_every, cfg.keep_last)]

    def register_hooks(self, hooks: Iterable[HookBase]) -> None:
        """Add hooks after those registered, but before the checkpointer, which stays last so that a
        checkpoint holds every hook's state after the step."""
        for hook in hooks:
            if not isinstance(hook, HookBase):
                raise TypeError(f"a training hook must derive from scratchdet.engine.hooks.HookBase, "
                                f"got {type(hook).__name__}")
            key = hook_state_key(hook)
            if has_state(hook) and any(has_state(h) and hook_state_key(h) == key for h in self.hooks):
                raise ValueError(f"two hooks keep their state under {key!r} in checkpoints; give one "
                                 "another state_key")
            hook.trainer = weakref.proxy(self)    # no reference cycle through the hooks
            last = len(self.hooks) - 1
            at = last if self.hooks and isinstance(self.hooks[last], CheckpointHook) else len(self.hooks)
            self.hooks.insert(at, hook)

    def _hook(self, kind: type) -> HookBase:
        return next(h for h in self.hooks if isinstance(h, kind))

    def close(self) -> None:
        """Release the DDP wrapper and the persistent loader's worker processes now.

        The trainer sits in reference cycles, so without this they live until some later garbage
        collection, possibly interpreter exit, where a still-alive gloo process group can abort the
        process ("terminate called without an active exception"). The model stays usable."""
        self.net = self.model
        self._persistent_loader = None

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_sync_batch_norm(self, model: torch.nn.Module) -> None:
        """SyncBN synchronises over GPUs only: under DDP on the CPU (gloo) torch cannot run it."""
        if not (self.dist.enabled and self.device.type != "cuda"):
            return
        if any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules()):
            raise ValueError("norm 'syncbn' synchronises BatchNorm statistics over GPUs under DDP; this run is "
                             f"on {self.device.type} (gloo), where torch cannot: use norm 'bn' (per-process "
                             "statistics, averaged before checkpoints and evaluation) or 'gn'")

    @staticmethod
    def loader_workers(cfg: TrainConfig, cached: bool) -> int:
        """``cfg.workers``, or for -1 (auto): with the images decoded in memory on a machine of at most
        two cores, none (loading in the training process: the augmentation is cheap, and workers
        would take cores from the step; benchmarks/RESULTS.md, "training loader"); else half the
        cores, at most 8; the stock path keeps its 2."""
        if cfg.workers >= 0:
            return cfg.workers
        if not cfg.fast_kernels:
            return 2
        cores = os.cpu_count() or 1
        return 0 if cached and cores <= 2 else min(8, max(1, cores // 2))

    # ------------------------------------------------------------------ the state
    @property
    def iteration(self) -> int:
        """Steps done."""
        return self.state.iteration

    @property
    def epoch(self) -> int:
        return self.state.epoch

    @property
    def skipped(self) -> int:
        """Steps skipped as non-finite."""
        return self._hook(NonFiniteGuard).skipped

    @property
    def bad_in_row(self) -> int:
        return self._hook(NonFiniteGuard).bad_in_row

    @property
    def best_map(self) -> float:
        return self._hook(EvaluationHook).best_map

    @property
    def interrupted(self) -> bool:
        """The run was stopped by SIGTERM / SIGINT."""
        return self._stop_signal is not None

    @property
    def finished(self) -> bool:
        return self.state.iteration >= self.horizon.max_iters

    def evaluation_model(self) -> torch.nn.Module:
        """The weights evaluation and the saved models use: the EMA's when an EMAHook runs (its
        buffers the model's, synced over ranks), else the model."""
        ema = next((h for h in self.hooks if isinstance(h, EMAHook)), None)
        return ema.averaged_model() if ema is not None else self.model

    def state_dict(self) -> dict:
        """What a checkpoint holds (:class:`TrainState`)."""
        return self.state.state_dict()

    def sync_buffers(self) -> None:
        """Average BN running statistics over ranks (without SyncBN each rank's differ after the last step)."""
        if not self.dist.enabled:
            return
        for buf in self.model.buffers():
            if buf.is_floating_point():
                torch.distributed.all_reduce(buf)
                buf /= self.dist.world_size

    def save_checkpoint(self) -> str | None:
        """Write a checkpoint now (every rank calls it; rank 0 writes and gets the path)."""
        return self._hook(CheckpointHook).save()

    def evaluate(self) -> dict:
        """Evaluate now, logged like a periodic evaluation (every rank calls it)."""
        return self._hook(EvaluationHook).evaluate()

    def resume(self, path: str | bool = True) -> int:
        """Restore everything from `path`, or when True from the newest checkpoint in out_dir that
        loads (one warning names the damaged newer ones it skipped)."""
        if path is True:
            path, ckpt, skipped = load_newest_checkpoint(self.cfg.out_dir)
            if skipped and self.dist.is_main:
                warnings.warn("--resume: skipped " + "; ".join(why for _, why in skipped) + f"; resuming from {path}",
                              stacklevel=3)
        else:
            ckpt = load_checkpoint(path)
        self._check_resumable(ckpt, path)
        self.state.load_state_dict(ckpt)
        if self.state.batch_in_epoch >= self.sampler.batches_per_epoch():   # saved at an epoch's end
            self.state.epoch, self.state.batch_in_epoch = self.state.epoch + 1, 0
        self.resumed_from = path
        if self.dist.is_main:
            self.training_log.truncate_after(self.iteration)   # steps run again are logged again
        return self.iteration

    def _check_resumable(self, ckpt: dict, path: str) -> None:
        """A checkpoint of another model or class list is refused by name; changed training
        options are allowed (e.g. a longer schedule) and listed in one warning."""
        if ckpt.get("classes") is not None and list(ckpt["classes"]) != list(self.classes):
            raise ValueError(f"--resume: {path} was trained on classes {ckpt['classes']}, but the data set "
                             f"has {list(self.classes)}")
        current = self.model.config
        try:   # through the record, so a list saved by an older version equals today's tuple
            saved = SSDConfig.from_dict(ckpt["model_config"]) if ckpt.get("model_config") else current
        except ConfigError as exc:
            raise CheckpointError(f"--resume: {path}: {exc}") from None
        changed = [k for k in current.field_names()      # detection settings do not touch the weights
                   if k not in DETECT_DEFAULTS and saved[k] != current[k]]
        if changed:
            diff = ", ".join(f"{k}: {saved[k]!r} -> {current[k]!r}" for k in changed)
            raise ValueError(f"--resume: {path} holds another model ({diff}); resume with the same "
                             "--set model=... / model_overrides=... it was trained with")
        before, now = ckpt.get("train_config") or {}, self.cfg.to_dict()
        changed = [k for k in sorted(now) if k in before and before[k] != now[k] and k != "out_dir"]
        if changed and self.dist.is_main:
            warnings.warn("resuming with changed training options: " +
                          ", ".join(f"{k} {before[k]!r} -> {now[k]!r}" for k in changed), stacklevel=4)

    # ------------------------------------------------------------------ the loop
    def _loader(self) -> DataLoader:
        self.sampler.set_position(self.state.epoch, self.state.batch_in_epoch)
        if self.cfg.fast_kernels:           # one loader; its persistent workers live across epochs
            if self._persistent_loader is None:
                self._persistent_loader = DataLoader(
                    self.train_set, batch_sampler=self.sampler, num_workers=self.workers,
                    collate_fn=collate_detection, pin_memory=self.device.type == "cuda",
                    persistent_workers=self.workers > 0)
            return self._persistent_loader
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(self.state.epoch)
        return DataLoader(self.train_set, batch_sampler=self.sampler, num_workers=self.workers,
                          collate_fn=collate_detection, pin_memory=self.device.type == "cuda",
                          persistent_workers=False)

    def _step(self, images, targets) -> dict:
        """One SGD step at the lr the schedule hook set; a non-finite loss (or, without AMP,
        gradient) skips the update. Returns the step's record."""
        cfg = self.cfg
        lr = self.optimizer.param_groups[0]["lr"]
        self.net.train()
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        # the targets stay on the host: the model checks them there, then copies them to its device
        with self._autocast():
            losses = self.net(images, targets)
        loss = losses["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        # Every rank must agree to skip, or DDP's gradient all-reduce would hang.
        loss_finite = not broadcast_flag(not bool(torch.isfinite(loss.detach())), self.dist)
        if loss_finite:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        else:
            grad_norm = float("nan")
        # With AMP, an overflowing gradient is the scaler's business (it skips and lowers the scale);
        # in fp32 a non-finite gradient is a bad step like a non-finite loss.
        bad = not loss_finite or (not self.use_amp and not math.isfinite(grad_norm))
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            if self.use_amp:
                self.scaler.update()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return {
            "epoch": self.state.epoch, "lr": lr,
            "loss": float(loss.detach()), "loss_loc": float(losses["loss_loc"].detach()),
            "loss_conf": float(losses["loss_conf"].detach()), "grad_norm": grad_norm, "skipped": bad,
        }

    def _call(self, event: str, reverse: bool = False) -> None:
        for hook in (reversed(self.hooks) if reverse else list(self.hooks)):
            getattr(hook, event)()

    def _on_signal(self, signum, frame):
        self._stop_signal = signum

    @contextlib.contextmanager
    def _stop_signals_caught(self) -> Iterator[None]:
        """SIGTERM / Ctrl-C finish the step, then the run checkpoints and exits: no lost work."""
        self._stop_signal = None
        old_handlers = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                old_handlers[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not in the main thread
                pass
        try:
            yield
        finally:
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)

    def _run_steps(self, stop_after: int | None) -> None:
        state, steps_this_call = self.state, 0
        while state.iteration < self.horizon.max_iters:
            for images, targets, _ in self._loader():
                self._call("before_step")
                self.step_record = self._step(images, targets)
                self.step_images = images.shape[0] * self.dist.world_size
                state.iteration += 1
                state.batch_in_epoch += 1
                if state.batch_in_epoch >= self.sampler.batches_per_epoch():
                    # the position is the next batch's, so a checkpoint here resumes in the next epoch
                    state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                self.step_record["iter"] = state.iteration  # steps done, like the checkpoint's iteration
                self._call("after_step")
                steps_this_call += 1
                wants_stop = self._stop_signal is not None or (stop_after is not None and steps_this_call >= stop_after)
                if broadcast_flag(wants_stop, self.dist):
                    return
                if state.iteration >= self.horizon.max_iters:
                    break

    def train(self, resume: str | bool | None = None, stop_after: int | None = None) -> dict:
        """Train to cfg.max_iters (or as far as the time budget allows). `stop_after` ends this call early after that many steps (tests, demos)."""
        if resume:
            self.resume(resume)
        if self.dist.is_main:
            os.makedirs(self.cfg.out_dir, exist_ok=True)
            write_data_fit(self.cfg.out_dir, self.data_fit)
        start = time.perf_counter()
        try:
            self._call("before_train")
            with self._stop_signals_caught():
                self._run_steps(stop_after)
            if self.interrupted:
                self.summary = {"iteration": self.iteration, "interrupted": True}
            else:
                self.summary = {"iteration": self.iteration, "skipped_steps": self.skipped,
                                "train_seconds": time.perf_counter() - start, "data_fit": self.data_fit,
                                "precision": self.precision}
                skipped_images = getattr(self.train_set, "skipped", None)   # skip_bad_images=true
                if skipped_images:   # those this process saw: all of them when the images are cached
                    self.summary["skipped_images"] = len(skipped_images)
            self._call("after_train", reverse=True)
        finally:
            self._call("teardown", reverse=True)
        return self.summary
