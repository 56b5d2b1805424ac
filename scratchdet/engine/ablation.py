"""The paper's two ablations as grids of small training runs: BN x learning rate (Table 1) and the stem study.

Every run of a grid trains from scratch with the same seed, the same data order and the same
number of iterations; only the setting (and the learning rate) changes. A run whose loss goes
non-finite is stopped at that step and reported as NAN, as in the paper's table. Each run has
its own folder (``metrics.jsonl``, checkpoints, ``model_final.pt``, ``result.json``), so a
killed grid resumes where it stopped (``resume=True``): finished runs are skipped and the
interrupted one continues from its last checkpoint.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field

from ..models.registry import list_models
from ..structures.files import atomic_write_json
from .checkpoint import latest_checkpoint
from .config import make_config
from .data_setup import ensure_synthetic
from .distributed import init_distributed
from .report import ablation_table, plot_ablation_figures
from .runs import detection_metrics, prepare_out_dir, read_result
from .trainer import NonFiniteTrainingError, Trainer

__all__ = ["Setting", "BN_LR_SETTINGS", "STEM_SETTINGS", "BN_LR_LRS", "RunSpec", "Ablation",
           "AblationError"]


class AblationError(ValueError):
    """A user error in the ablation's arguments or output folder."""


@dataclass(frozen=True)
class Setting:
    key: str
    label: str
    model: str
    overrides: dict = field(default_factory=dict)


# Table 1: VGG16-SSD from scratch with BN switched on in backbone and / or head
BN_LR_MODEL = "vgg16_ssd_small"
BN_LR_SETTINGS = {
    "none": Setting("none", "no BN", BN_LR_MODEL, {"bn_backbone": False, "bn_head": False}),
    "head": Setting("head", "BN in head", BN_LR_MODEL, {"bn_backbone": False, "bn_head": True}),
    "backbone": Setting("backbone", "BN in backbone", BN_LR_MODEL, {"bn_backbone": True, "bn_head": False}),
    "both": Setting("both", "BN in backbone and head", BN_LR_MODEL, {"bn_backbone": True, "bn_head": True}),
}
BN_LR_LRS = (0.001, 0.01, 0.05)
# The stem study: ResNet-18 SSD, (a)-(c) the paper's ablations, (d) Root-ResNet-18
STEM_SETTINGS = {
    "a": Setting("a", "(a) 7x7/2 conv + max-pool", "resnet18a_ssd_small"),
    "b": Setting("b", "(b) max-pool removed", "resnet18b_ssd_small"),
    "c": Setting("c", "(c) first conv stride 1", "resnet18c_ssd_small"),
    "d": Setting("d", "(d) Root-ResNet-18", "root_resnet18_ssd_small"),
}
STEM_LR = 0.05

@dataclass(frozen=True)
class RunSpec:
    """One training run of a grid."""
    setting: Setting
    lr: float
    seed: int

    @property
    def key(self) -> str:
        return f"{self.setting.key}_lr{self.lr:g}_seed{self.seed}"


def _parse_keys(text: str | None, known: dict, what: str) -> list[str]:
    if not text:
        return list(known)
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in known]
    if unknown or not keys:
        raise AblationError(f"unknown {what} {unknown or text!r}; choose from {', '.join(known)}")
    return keys


def _parse_numbers(text: str | None, default, what: str, kind=float) -> list:
    if not text:
        return list(default)
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise AblationError(f"--{what}: expected comma-separated numbers, got {text!r}") from None
    if not values or (kind is float and not all(math.isfinite(v) and v > 0 for v in values)):
        raise AblationError(f"--{what}: expected positive numbers, got {text!r}")
    return values


class Ablation:
    """A grid of runs; :meth:`run` trains what is missing, then writes the table, figures and results.

    Args:
        kind: "bn-lr" (Table 1) or "stem".
        out: the output folder (one sub-folder per run under ``runs/``).
        data: a VOC-layout folder; None: the default synthetic data set, generated in ``out/data``.
        budget_iters: training iterations of every run.
        model: a preset to run the grid on instead of the default (bn-lr only: its
            ``bn_backbone`` / ``bn_head`` are switched).
        settings, lrs, seeds: comma-separated subsets ("none,both", "0.01,0.05", "0,1,2").
        resume: skip finished runs and continue an interrupted one; without it a folder that
            already holds runs is refused.
    """

    def __init__(self, kind: str, out: str, data: str | None = None, budget_iters: int = 300,
                 model: str | None = None, settings: str | None = None, lrs: str | None = None,
                 seeds: str | None = None, batch_size: int = 32, workers: int = -1, device: str | None = None,
                 resume: bool = False, log=print, train_overrides: dict | None = None):
        if kind not in ("bn-lr", "stem"):
            raise AblationError(f"unknown ablation {kind!r}; expected 'bn-lr' or 'stem'")
        if budget_iters < 1 or batch_size < 1:
            raise AblationError(f"--budget-iters and --batch-size must be >= 1, got {budget_iters} and {batch_size}")
        self.kind, self.out, self.budget_iters = kind, os.fspath(out), int(budget_iters)
        self.batch_size, self.workers, self.device, self.resume, self.log = batch_size, workers, device, resume, log
        self.train_overrides = dict(train_overrides or {})
        known = BN_LR_SETTINGS if kind == "bn-lr" else STEM_SETTINGS
        chosen = {k: known[k] for k in _parse_keys(settings, known, "setting(s)")}
        if model is not None:
            if kind == "stem":
                raise AblationError("--model applies to bn-lr; the stem study compares its own four networks")
            if model not in list_models():
                raise AblationError(f"unknown model {model!r}; available: {', '.join(list_models())}")
            chosen = {k: Setting(s.key, s.label, model, s.overrides) for k, s in chosen.items()}
        self.settings = chosen
        self.lrs = _parse_numbers(lrs, BN_LR_LRS if kind == "bn-lr" else (STEM_LR,), "lrs")
        self.seeds = _parse_numbers(seeds, (0,), "seeds", kind=int)
        self.data = os.fspath(data) if data else None
        self.runs = [RunSpec(s, lr, seed) for seed in self.seeds for lr in self.lrs for s in self.settings.values()]

    # ------------------------------------------------------------------ data
    def _data_root(self) -> str:
        if self.data:
            if not os.path.isdir(self.data):
                raise AblationError(f"data folder not found: {self.data}")
            return self.data
        return ensure_synthetic(os.path.join(self.out, "data"))

    # ------------------------------------------------------------------ one run
    def _run_dir(self, spec: RunSpec) -> str:
        return os.path.join(self.out, "runs", spec.key)

    def _train_config(self, spec: RunSpec, data_root: str):
        iters = self.budget_iters
        extra = dict(self.train_overrides)
        # the user's model overrides, with the setting's switches on top (they are the experiment)
        model_overrides = {**extra.pop("model_overrides", {}), **spec.setting.overrides}
        options = {
            "model": spec.setting.model, "model_overrides": model_overrides, "dataset": "voc",
            "data_root": data_root, "train_split": "train", "val_split": "val", "batch_size": self.batch_size,
            "lr": spec.lr, "warmup_iters": max(1, iters // 10), "schedule": "cosine", "max_iters": iters,
            "eval_every": 0, "ckpt_every": max(1, iters // 4), "keep_last": 1, "seed": spec.seed,
            "workers": self.workers, "out_dir": self._run_dir(spec),
            "max_bad_steps": 1,                                  # the first non-finite step ends the run: NAN
            "augment": {"expand_prob": 0.3, "max_expand": 2.0, "min_crop": 0.5},   # the demo's
            **extra,
        }
        return make_config(None, options)

    def _train_one(self, spec: RunSpec, data_root: str) -> dict:
        cfg = self._train_config(spec, data_root)
        trainer = Trainer(cfg, dist_info=init_distributed(self.device), progress=False)
        val_set, trainer.val_set = trainer.val_set, None          # evaluated once, below
        resume = bool(self.resume and latest_checkpoint(cfg.out_dir))
        start = time.perf_counter()
        result = {"setting": spec.setting.key, "label": spec.setting.label, "model": spec.setting.model,
                  "lr": spec.lr, "seed": spec.seed, "iterations": self.budget_iters}
        try:
            with trainer:     # each run's loader workers end with the run, not at a later GC
                summary = trainer.train(resume=resume or None)
        except NonFiniteTrainingError as exc:
            result.update(status="diverged", map=None, diverged_at=exc.iteration, message=str(exc),
                          train_seconds=round(time.perf_counter() - start, 1))
            return result
        if summary.get("interrupted"):
            raise KeyboardInterrupt
        result.update(status="done", train_seconds=round(time.perf_counter() - start, 1))
        result.update(self._evaluate(trainer.model, val_set, data_root, trainer.workers))
        return result

    def _evaluate(self, model, val_set, data_root: str, workers: int) -> dict:
        # workers: the trainer's resolved count (-1 is auto)
        return detection_metrics(model, val_set, data_root, self.batch_size, workers, small=self.kind == "stem")

    # ------------------------------------------------------------------ the grid
    def _check_out(self) -> None:
        prepare_out_dir(self.out, self.resume, "ablation", AblationError)

    def run(self) -> dict:
        """Train every run that is not finished, then write table.md, results.json and the figures."""
        self._check_out()
        data_root = self._data_root()
        results, done_iters, spent = [], 0, 0.0
        todo = len(self.runs)
        for i, spec in enumerate(self.runs, start=1):
            path = os.path.join(self._run_dir(spec), "result.json")
            earlier = read_result(path) if self.resume else None
            if earlier is not None:
                if earlier.get("iterations") != self.budget_iters:   # a finished run of another grid
                    raise AblationError(f"{path} was trained for {earlier.get('iterations')} iterations, not "
                                        f"{self.budget_iters}: resume with --budget-iters "
                                        f"{earlier.get('iterations')}, or choose another --out")
                results.append(earlier)
                self.log(f"[{i}/{todo}] {spec.setting.label}, lr {spec.lr:g}, seed {spec.seed}: finished earlier")
                continue
            left = (todo - i + 1) * self.budget_iters
            eta = f", ETA {left * spent / done_iters / 60:.0f} min" if done_iters else ""
            self.log(f"[{i}/{todo}] {spec.setting.label}, lr {spec.lr:g}, seed {spec.seed}: "
                     f"training {self.budget_iters} iterations{eta}")
            t0 = time.perf_counter()
            result = self._train_one(spec, data_root)
            spent += time.perf_counter() - t0
            done_iters += self.budget_iters
            atomic_write_json(path, result)
            shown = "NAN (diverged at iteration %d)" % result["diverged_at"] if result["map"] is None \
                else f"VOC07 mAP {100 * result['map']:.1f}"
            self.log(f"    -> {shown}, {result['train_seconds']:.0f} s")
            results.append(result)
        return self.write_report(results, data_root)

    # ------------------------------------------------------------------ report
    def write_report(self, results: list[dict], data_root: str) -> dict:
        summary = {"kind": self.kind, "data": data_root, "budget_iters": self.budget_iters,
                   "batch_size": self.batch_size, "seeds": self.seeds, "lrs": self.lrs,
                   "settings": {k: asdict(s) for k, s in self.settings.items()}, "runs": results}
        atomic_write_json(os.path.join(self.out, "results.json"), summary)
        table = ablation_table(self.kind, self.settings, self.lrs, results, self.budget_iters, self.batch_size)
        with open(os.path.join(self.out, "table.md"), "w", encoding="utf-8") as f:
            f.write(table)
        summary["table"] = table
        runs = {(s.key, lr): self._run_dir(RunSpec(s, lr, self.seeds[0])) for s in self.settings.values()
                for lr in self.lrs}
        summary["figures"] = plot_ablation_figures(self.out, self.settings, self.lrs, runs)
        return summary
