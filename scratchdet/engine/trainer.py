"""The from-scratch training loop: SGD + warmup + multistep/cosine, AMP on CUDA,
non-finite guard, JSONL metrics with the paper's gradient statistics, periodic
evaluation, atomic resumable checkpoints, and DDP through torchrun."""
from __future__ import annotations

import math
import os
import signal
import time

import torch
from torch.utils.data import DataLoader

from .checkpoint import (atomic_save, checkpoint_path, latest_checkpoint, load_checkpoint, prune_checkpoints,
                         rng_state, set_rng_state)
from .config import TrainConfig
from .distributed import DistInfo, barrier, broadcast_flag, init_distributed
from .metrics import GradFluctuation, JSONLWriter
from .sampler import ResumableBatchSampler
from .schedule import lr_factor


class NonFiniteTrainingError(RuntimeError):
    """Raised after `max_bad_steps` non-finite steps in a row."""


def param_groups(model: torch.nn.Module, weight_decay: float, no_decay_bn_bias: bool) -> list[dict]:
    """Weight decay on conv/linear weights; optionally none on BN parameters and biases."""
    if not no_decay_bn_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    from ..models.layers import is_norm

    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            (no_decay if is_norm(module) or name == "bias" else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Trainer:
    def __init__(self, cfg: TrainConfig, dist_info: DistInfo | None = None, device: str | None = None,
                 progress: bool = True, train_set=None, val_set=None, classes=None):
        from .data_setup import build_datasets
        from ..models import build_model

        self.cfg = cfg
        self.dist = dist_info or init_distributed(device)
        self.device = self.dist.device
        self.progress = progress and self.dist.is_main
        torch.manual_seed(cfg.seed)
        if train_set is None:
            train_set, val_set, classes = build_datasets(cfg, self.dist)
        self.train_set, self.val_set, self.classes = train_set, val_set, classes
        self.model = build_model(cfg.model, num_classes=len(classes) + 1, **cfg.model_overrides).to(self.device)
        self.model.class_names = list(classes)  # saved with the weights by scratchdet.save
        from ..models.layers import use_fused_batch_norm

        use_fused_batch_norm(self.model, cfg.fast_kernels)     # off: the stock BatchNorm / add / ReLU ops
        cached = bool(cfg.fast_kernels and cfg.cache_images and hasattr(train_set, "cache_images")
                      and train_set.cache_images(int(cfg.cache_max_mb) << 20))
        self.workers = self.loader_workers(cfg, cached)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)
        self._check_sync_batch_norm()
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
        self.fluct = GradFluctuation()
        self.iteration, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.bad_in_row, self.skipped = 0, 0
        self.best_map = -1.0
        self.history_map: list[tuple[int, float]] = []
        self.metrics = JSONLWriter(os.path.join(cfg.out_dir, "metrics.jsonl"))
        self._stop_signal = None

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

    def _check_sync_batch_norm(self) -> None:
        """SyncBN synchronises over GPUs only: under DDP on the CPU (gloo) torch cannot run it."""
        if not (self.dist.enabled and self.device.type != "cuda"):
            return
        if any(isinstance(m, torch.nn.SyncBatchNorm) for m in self.model.modules()):
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

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "model_config": dict(getattr(self.model, "config", {})),   # plain data: loaded with weights_only
            "classes": list(self.classes),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iteration": self.iteration,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "rng": rng_state(),
            "fluct": self.fluct.state_dict(),
            "bad_in_row": self.bad_in_row,
            "skipped": self.skipped,
            "best_map": self.best_map,
            "history_map": self.history_map,
            "train_config": self.cfg.to_dict(),
        }

    def _sync_buffers(self) -> None:
        """Average BN running statistics over ranks (without SyncBN each rank's differ after the last step)."""
        if not self.dist.enabled:
            return
        import torch.distributed as dist

        for buf in self.model.buffers():
            if buf.is_floating_point():
                dist.all_reduce(buf)
                buf /= self.dist.world_size

    def save_checkpoint(self) -> str | None:
        self._sync_buffers()  # every rank calls save_checkpoint; only rank 0 writes
        if not self.dist.is_main:
            return None
        path = checkpoint_path(self.cfg.out_dir, self.iteration)
        atomic_save(self.state_dict(), path)
        atomic_save(self.state_dict(), os.path.join(self.cfg.out_dir, "last.pt"))
        prune_checkpoints(self.cfg.out_dir, self.cfg.keep_last)
        return path

    def resume(self, path: str | bool = True) -> int:
        """Restore everything from `path` (or the newest checkpoint in out_dir when True)."""
        if path is True:
            path = latest_checkpoint(self.cfg.out_dir)
            if path is None:
                raise FileNotFoundError(f"--resume: no checkpoint in {os.path.join(self.cfg.out_dir, 'checkpoints')}")
        ckpt = load_checkpoint(path)
        self._check_resumable(ckpt, path)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.iteration, self.epoch, self.batch_in_epoch = ckpt["iteration"], ckpt["epoch"], ckpt["batch_in_epoch"]
        self.fluct.load_state_dict(ckpt["fluct"])
        self.bad_in_row, self.skipped = ckpt["bad_in_row"], ckpt["skipped"]
        self.best_map, self.history_map = ckpt["best_map"], [tuple(x) for x in ckpt["history_map"]]
        set_rng_state(ckpt["rng"])
        if self.dist.is_main:
            self.metrics.truncate_after(self.iteration)
        return self.iteration

    def _check_resumable(self, ckpt: dict, path: str) -> None:
        """A checkpoint of another model or class list is refused by name; changed training
        options are allowed (e.g. a longer schedule) and listed in one warning."""
        if ckpt.get("classes") is not None and list(ckpt["classes"]) != list(self.classes):
            raise ValueError(f"--resume: {path} was trained on classes {ckpt['classes']}, but the data set "
                             f"has {list(self.classes)}")
        from ..models.ssd import DETECT_DEFAULTS   # detection settings do not touch the weights

        saved = ckpt.get("model_config") or {}
        changed = sorted(k for k in saved if k not in DETECT_DEFAULTS and saved[k] != self.model.config.get(k))
        if changed:
            diff = ", ".join(f"{k}: {saved.get(k)!r} -> {self.model.config.get(k)!r}" for k in changed)
            raise ValueError(f"--resume: {path} holds another model ({diff}); resume with the same "
                             "--set model=... / model_overrides=... it was trained with")
        before, now = ckpt.get("train_config") or {}, self.cfg.to_dict()
        changed = [k for k in sorted(now) if k in before and before[k] != now[k] and k != "out_dir"]
        if changed and self.dist.is_main:
            import warnings
            warnings.warn("resuming with changed training options: " +
                          ", ".join(f"{k} {before[k]!r} -> {now[k]!r}" for k in changed), stacklevel=3)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict:
        from ..evaluation.evaluate import evaluate_model

        result = {}
        self._sync_buffers()
        if self.dist.is_main and self.val_set is not None:
            result = evaluate_model(self.model, self.val_set, batch_size=self.cfg.batch_size, device=self.device,
                                    max_images=self.cfg.eval_max_images, workers=self.workers,
                                    memory_format=self.memory_format)
            self.history_map.append((self.iteration, result["map"]))
            record = {"iter": self.iteration, "map": result["map"], "eval": True}
            if "coco" in result:
                record["coco"] = result["coco"]
            self.metrics.write(record)
            if result["map"] > self.best_map:
                self.best_map = result["map"]
                from ..models.io import save
                save(self.model, os.path.join(self.cfg.out_dir, "best_model.pt"))
        barrier(self.dist)
        return result

    # ------------------------------------------------------------------ the loop
    def _on_signal(self, signum, frame):
        self._stop_signal = signum

    def _set_lr(self) -> float:
        f = lr_factor(self.iteration, self.cfg.max_iters, self.cfg.warmup_iters, self.cfg.warmup_factor,
                      self.cfg.schedule, self.cfg.milestones, self.cfg.gamma)
        lr = self.cfg.lr * f
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _loader(self) -> DataLoader:
        from ..data import collate_detection

        self.sampler.set_position(self.epoch, self.batch_in_epoch)
        if self.cfg.fast_kernels:           # one loader; its persistent workers live across epochs
            if self._persistent_loader is None:
                self._persistent_loader = DataLoader(
                    self.train_set, batch_sampler=self.sampler, num_workers=self.workers,
                    collate_fn=collate_detection, pin_memory=self.device.type == "cuda",
                    persistent_workers=self.workers > 0)
            return self._persistent_loader
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(self.epoch)
        return DataLoader(self.train_set, batch_sampler=self.sampler, num_workers=self.workers,
                          collate_fn=collate_detection, pin_memory=self.device.type == "cuda",
                          persistent_workers=False)

    def _step(self, images, targets) -> dict:
        cfg = self.cfg
        lr = self._set_lr()
        self.net.train()
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        # the targets stay on the host: the model checks them there, then copies them to its device
        with torch.autocast(self.device.type, enabled=self.use_amp):
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
            self.bad_in_row += 1
            self.skipped += 1
            if self.use_amp:
                self.scaler.update()
            if self.bad_in_row >= cfg.max_bad_steps:
                raise NonFiniteTrainingError(
                    f"training diverged: {self.bad_in_row} non-finite steps in a row, the last at iteration "
                    f"{self.iteration} (loss={float(loss.detach())}, grad_norm={grad_norm}). Lower the lr "
                    f"(now {lr:g}), enable BN in backbone and head, or set grad_clip.")
        else:
            self.bad_in_row = 0
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return {
            "epoch": self.epoch, "lr": lr,
            "loss": float(loss.detach()), "loss_loc": float(losses["loss_loc"].detach()),
            "loss_conf": float(losses["loss_conf"].detach()),
            "grad_norm": grad_norm, "grad_fluct": self.fluct.update(grad_norm) if not bad else float("nan"),
            "skipped": bad,
        }

    def train(self, resume: str | bool | None = None, stop_after: int | None = None) -> dict:
        """Train to cfg.max_iters. `stop_after` ends this call early after that many steps (tests, demos)."""
        cfg = self.cfg
        if resume:
            self.resume(resume)
        if self.dist.is_main:
            os.makedirs(cfg.out_dir, exist_ok=True)
        old_handlers = {}
        for sig in (signal.SIGTERM, signal.SIGINT):  # finish the step, checkpoint, exit: no lost work
            try:
                old_handlers[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not in the main thread
                pass
        from tqdm import tqdm

        bar = tqdm(total=cfg.max_iters, initial=self.iteration, disable=not self.progress, dynamic_ncols=True,
                   desc="train", unit="it")
        steps_this_call, t_last, n_img = 0, time.perf_counter(), 0
        start_time = time.perf_counter()
        stopping = False
        try:
            while self.iteration < cfg.max_iters and not stopping:
                for images, targets, _ in self._loader():
                    rec = self._step(images, targets)
                    self.iteration += 1
                    self.batch_in_epoch += 1
                    rec["iter"] = self.iteration  # steps done, like the checkpoint's iteration
                    steps_this_call += 1
                    n_img += images.shape[0] * self.dist.world_size
                    now = time.perf_counter()
                    rec["images_per_s"] = n_img / max(now - t_last, 1e-9)
                    if self.dist.is_main:
                        self.metrics.write(rec)
                    if self.iteration % cfg.log_every == 0 or self.iteration == cfg.max_iters:
                        bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{rec['lr']:.4g}",
                                        img_s=f"{rec['images_per_s']:.1f}", refresh=False)
                        t_last, n_img = now, 0
                    bar.update(1)
                    if cfg.ckpt_every and self.iteration % cfg.ckpt_every == 0:
                        self.save_checkpoint()
                    if cfg.eval_every and self.iteration % cfg.eval_every == 0 and self.iteration < cfg.max_iters:
                        r = self.evaluate()
                        if r:
                            bar.write(f"iter {self.iteration}: VOC07 mAP {r['map']:.4f}")
                    wants_stop = self._stop_signal is not None or (
                        stop_after is not None and steps_this_call >= stop_after)
                    stopping = broadcast_flag(wants_stop, self.dist)
                    if stopping or self.iteration >= cfg.max_iters:
                        break
                if self.batch_in_epoch >= self.sampler.batches_per_epoch():
                    self.epoch += 1
                    self.batch_in_epoch = 0
        finally:
            bar.close()
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
        interrupted = self._stop_signal is not None
        self.save_checkpoint()
        barrier(self.dist)
        if interrupted:
            if self.dist.is_main:
                print(f"interrupted at iteration {self.iteration}; checkpoint saved in {cfg.out_dir} "
                      f"(resume with --resume)")
            return {"iteration": self.iteration, "interrupted": True}
        summary = {"iteration": self.iteration, "skipped_steps": self.skipped,
                   "train_seconds": time.perf_counter() - start_time}
        if self.iteration >= cfg.max_iters:
            result = self.evaluate()
            if result:
                summary["map"] = result["map"]
                summary["ap"] = result["ap"]
            if self.dist.is_main:
                from ..models.io import save
                save(self.model, os.path.join(cfg.out_dir, "model_final.pt"))
        summary["best_map"] = self.best_map
        return summary
