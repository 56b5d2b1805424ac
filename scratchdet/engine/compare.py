"""``scratchdet compare``: train several detectors from scratch on the user's data with the same recipe
and budget, score them on the validation split, time them on this machine, and lay them out on the
accuracy / latency Pareto front.

Each candidate is a preset (``root_resnet_demo``), a Root-ResNet spec (``root_resnet:w=16,d=1-1-1-1``,
:mod:`scratchdet.models.search_space`), ``timm:<name>`` (a timm backbone, random weights), or
``path/to/file.py:Factory`` (a user module: ``Factory()`` returns a backbone ``nn.Module`` whose
forward gives feature maps, finest first; :func:`scratchdet.build_detector` puts the SSD around it);
``auto:N`` is N specs spread over :data:`~scratchdet.models.search_space.LADDER`.

The recipe is the ``demo`` training preset (batch 16, lr 0.05, cosine, the demo's augmentation). A
wall-clock budget (``10m``) lays each run's schedule out for the time (``time_budget``): the fair
default on one machine, since a cheap network then gets more steps (and, like any budgeted run,
trains in bfloat16 where ``cpu_bf16=auto`` measures it faster: each run decides for its own
network; ``--set cpu_bf16=off`` keeps every run float32). An iteration budget
(``2000it``) gives every run the same steps. The evaluation and the timing come after the budget.

Every run has its folder under ``runs/`` (metrics.jsonl, checkpoints, model_final.pt, the exported
detector, result.json); result.json is written last and atomically, so a killed comparison loses at
most the run in progress, and ``resume`` continues that one from its last checkpoint.
"""
from __future__ import annotations

import copy
import importlib.util
import math
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..models.export import DETECTOR_INPUT, export_detector_onnx
from ..models.fast_inference import FastPredictor
from ..models.registry import build_detector, build_model, resolve_config
from ..models.search_space import LADDER, is_root_resnet_spec, with_input_size
from ..structures.errors import UserError
from ..structures.files import atomic_write_json
from ..structures.image import as_hw
from .checkpoint import latest_checkpoint
from .config import TRAIN_PRESETS, make_config, parse_duration
from .distributed import init_distributed
from .model_stats import count_flops, count_params, inference_peak_bytes, training_peak_bytes
from .runs import detection_metrics, prepare_out_dir, read_result
from .timing import medians_ms, onnxruntime_session, openvino_model, runtime_threads, time_interleaved
from .trainer import NonFiniteTrainingError, Trainer

__all__ = ["CompareError", "Budget", "Candidate", "parse_budget", "parse_candidates", "parse_sizes",
           "load_user_factory", "Comparison", "pareto_fronts", "RUNTIMES", "MIN_ITERS", "MIN_SECONDS"]

RUNTIMES = ("eager", "fast", "onnxruntime", "openvino")
# the recipe's batch: the demo preset's, so a comparison trains as `scratchdet demo` does
DEMO_BATCH_SIZE: int = TRAIN_PRESETS["demo"]["batch_size"]
MIN_ITERS = 10          # fewer steps leave a network no better than its initialisation: nothing to compare
MIN_SECONDS = 20.0      # the time budget's settling and measuring steps take the first seconds
DEFAULT_SIZE = 128      # input side of timm and user backbones when --input-size is not given
THROUGHPUT_BATCH = 8


class CompareError(UserError):
    """A user error in the comparison's arguments or output folder."""


# ------------------------------------------------------------------ arguments
@dataclass(frozen=True)
class Budget:
    """``seconds`` of wall clock per run, or ``iterations`` per run."""
    text: str
    seconds: float | None = None
    iterations: int | None = None


def parse_budget(text: str) -> Budget:
    """``"10m"``, ``"90s"``, ``"1h"``, ``"600"`` (seconds) or ``"2000it"``."""
    text = str(text).strip()
    if text.lower().endswith("it"):
        number = text[:-2].strip()
        if not number.isdigit():
            raise CompareError(f"--budget {text!r}: expected a whole number of iterations, e.g. 2000it")
        iters = int(number)
        if iters < MIN_ITERS:
            raise CompareError(f"--budget {text}: too small to evaluate; give at least {MIN_ITERS}it "
                               "(a run needs some steps to be better than its random start)")
        return Budget(text, iterations=iters)
    try:
        seconds = parse_duration(text, "--budget")
    except UserError as exc:
        raise CompareError(f"{exc} (or iterations: 2000it)") from None
    if seconds is None or seconds < MIN_SECONDS:
        raise CompareError(f"--budget {text}: too small to evaluate; give at least {MIN_SECONDS:g}s per run "
                           f"(the time budget measures the step time first), or iterations (e.g. {MIN_ITERS}it)")
    return Budget(text, seconds=seconds)


@dataclass(frozen=True)
class Candidate:
    """One network to compare. ``model``: the preset / spec / ``timm:<name>`` (``custom`` for a user
    module, whose ``factory`` is ``path:Factory``); ``image_size``: None keeps the model's own."""
    name: str
    model: str
    image_size: int | None = None
    factory: str | None = None

    @property
    def label(self) -> str:
        return self.name if self.image_size is None else f"{self.name} @{self.image_size}"

    @property
    def key(self) -> str:
        """A folder name for the candidate."""
        base = os.path.basename(self.name) if self.factory else self.name
        slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", base).strip("_")
        return slug + ("" if self.image_size is None else f"_i{self.image_size}")


def parse_sizes(text: str | None) -> list[int | None]:
    if not text:
        return [None]
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CompareError(f"--input-size: expected comma-separated whole numbers, e.g. 128,192,256; got {text!r}") \
            from None
    if not sizes or any(s < 32 or s > 2048 for s in sizes):
        raise CompareError(f"--input-size: each size must be between 32 and 2048, got {text!r}")
    return sizes


def parse_seeds(text: str | None) -> list[int]:
    try:
        seeds = [int(v) for v in (text or "0").split(",") if v.strip()]
    except ValueError:
        raise CompareError(f"--seeds: expected comma-separated whole numbers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise CompareError(f"--seeds: expected distinct whole numbers >= 0, got {text!r}")
    return seeds


def _split_models(text: str) -> list[str]:
    """Split at the commas between candidates, not those inside a spec (``root_resnet:w=16,d=1-1-1-1``):
    a piece of the form ``key=value`` continues the spec before it."""
    names: list[str] = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        if names and is_root_resnet_spec(names[-1]) and re.fullmatch(r"[a-z]+=[^:/]*", piece):
            names[-1] += "," + piece
        else:
            names.append(piece)
    return names


def _user_module_parts(name: str) -> tuple[str, str] | None:
    path, sep, attr = name.rpartition(":")
    if sep and path.endswith(".py"):
        return path, attr
    return None


def load_user_factory(spec: str) -> Callable[[], torch.nn.Module]:
    """``path/to/file.py:Factory`` -> the callable; :class:`CompareError` (one line) when the file is
    missing or cannot be imported, or has no such callable."""
    parts = _user_module_parts(spec)
    if parts is None:
        raise CompareError(f"{spec!r} is not a user module; expected path/to/file.py:Factory")
    path, attr = parts
    if not os.path.isfile(path):
        raise CompareError(f"user module not found: {path} (from --models {spec})")
    if not attr.isidentifier():
        raise CompareError(f"--models {spec}: {attr!r} is not a Python name; expected path/to/file.py:Factory")
    module_name = "scratchdet_user_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    try:
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module        # the backbone's class is pickled by its module's name
        module_spec.loader.exec_module(module)
    except Exception as exc:   # user code: whatever it raises is the user's to fix, in one line
        sys.modules.pop(module_name, None)
        where = f" (line {exc.lineno})" if isinstance(exc, SyntaxError) and exc.lineno else ""
        raise CompareError(f"cannot import user module {path}{where}: {type(exc).__name__}: "
                           f"{' '.join(str(exc).split())}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise CompareError(f"user module {path} has no callable {attr!r} (expected a function or class "
                           "returning a backbone nn.Module)")
    return factory


def parse_candidates(text: str, sizes: list[int | None]) -> list[Candidate]:
    """The candidates of ``--models`` (times each ``--input-size``), each checked without building it."""
    names = _split_models(text or "")
    if not names:
        raise CompareError("--models: give at least one model, e.g. root_resnet_demo,timm:mobilenetv3_small_050")
    expanded: list[str] = []
    for name in names:
        if name.startswith("auto:"):
            count = name[len("auto:"):]
            if not count.isdigit() or not 1 <= int(count) <= len(LADDER):
                raise CompareError(f"--models {name}: expected auto:N with N from 1 to {len(LADDER)}")
            n = int(count)
            picks = [LADDER[round(k * (len(LADDER) - 1) / (n - 1))] for k in range(n)] if n > 1 else [LADDER[3]]
            expanded += picks
        else:
            expanded.append(name)
    candidates = []
    for name in dict.fromkeys(expanded):          # the same name twice is one candidate
        for size in sizes:
            if _user_module_parts(name):
                load_user_factory(name)             # fails now, before anything is written
                candidates.append(Candidate(name, "custom", size or DEFAULT_SIZE, factory=name))
                continue
            if not name.startswith("timm:") and ":" in name and not is_root_resnet_spec(name):
                raise CompareError(f"unknown model {name!r}: a preset, root_resnet:KEY=VALUE,..., timm:<name>, "
                                   "path/to/file.py:Factory or auto:N")
            if name.startswith("timm:") and size is None:
                size = DEFAULT_SIZE
            try:
                if is_root_resnet_spec(name):     # the spec's layout follows its size
                    model = name if size is None else with_input_size(name, size)
                    resolve_config(model)
                else:
                    model = name
                    resolve_config(name, **({} if size is None else {"image_size": size}))
                    if size is not None and not name.startswith("timm:"):
                        # a preset's extra layers are laid out for its own size: does it fit this one?
                        build_model(name, num_classes=2, image_size=size)
            except UserError as exc:
                raise CompareError(f"--models {name}: {exc}") from None
            except (ValueError, RuntimeError, ArithmeticError) as exc:   # a layer left with no pixels
                raise CompareError(f"--models {name} does not fit --input-size {size}: "
                                   f"{' '.join(str(exc).split()) or type(exc).__name__} (its extra layers are laid out for its own "
                                   "size; a root_resnet: spec takes any size)") from None
            candidates.append(Candidate(name, model, size))
    keys = [c.key for c in candidates]
    if len(set(keys)) != len(keys):
        raise CompareError(f"--models: two candidates share a folder name {sorted(k for k in keys if keys.count(k) > 1)}")
    return candidates


# ------------------------------------------------------------------ training
class _UserModelTrainer(Trainer):
    """The trainer around a user's backbone factory (``cfg.model`` is ``custom``)."""

    def __init__(self, cfg, factory: Callable[[], torch.nn.Module], **kwargs):
        self._factory = factory
        super().__init__(cfg, **kwargs)

    def make_model(self, num_classes: int, overrides: dict | None = None) -> torch.nn.Module:
        overrides = self.cfg.model_overrides if overrides is None else overrides
        return build_detector(self._factory(), num_classes=num_classes, **overrides)


def pareto_fronts(points: list[tuple[float, float]]) -> list[int]:
    """The front (0 = the Pareto front) of each (accuracy, latency) point: higher accuracy and lower
    latency are better; a point is on front k when only points of fronts < k dominate it."""
    fronts = [-1] * len(points)
    left, level = set(range(len(points))), 0
    while left:
        layer = {i for i in left if not any(
            points[j][0] >= points[i][0] and points[j][1] <= points[i][1] and points[j] != points[i]
            for j in left)}
        for i in layer:
            fronts[i] = level
        left -= layer
        level += 1
    return fronts


class Comparison:
    """A comparison of ``candidates``; :meth:`run` trains, scores and times what is missing, then
    writes ``report.md``, ``pareto.png`` and ``results.json``.

    Args:
        data: what ``scratchdet train --data`` takes (checked by the caller).
        candidates: from :func:`parse_candidates`; budget: from :func:`parse_budget`.
        seeds: one run per candidate and seed (the report shows the mean over seeds).
        runtimes: the deployment paths to time (a subset of :data:`RUNTIMES`); those whose runtime
            is not installed are skipped.
        train_overrides: training options on top of the recipe (``--set``).
    """

    def __init__(self, data: str, candidates: list[Candidate], budget: Budget, out: str, seeds=(0,),
                 device: str = "cpu", runtimes=RUNTIMES, batch_size: int = DEMO_BATCH_SIZE, workers: int = -1,
                 timing_rounds: int = 7, resume: bool = False, log=print, train_overrides: dict | None = None):
        self.data, self.candidates, self.budget, self.out = data, list(candidates), budget, os.fspath(out)
        self.seeds, self.device, self.runtimes = list(seeds), device, tuple(runtimes)
        self.batch_size, self.workers, self.timing_rounds = batch_size, workers, timing_rounds
        self.resume, self.log = resume, log
        self.train_overrides = dict(train_overrides or {})
        unknown = sorted(set(self.runtimes) - set(RUNTIMES))
        if unknown or not self.runtimes:
            raise CompareError(f"--runtimes: unknown {unknown or 'none given'}; choose from {', '.join(RUNTIMES)}")
        if batch_size < 1 or timing_rounds < 1:
            raise CompareError(f"--batch-size and --timing-rounds must be >= 1, got {batch_size} and {timing_rounds}")
        self.runs = [(c, s) for c in self.candidates for s in self.seeds]
        self._cache: dict = {}          # the deployment paths of the run being timed

    # ------------------------------------------------------------------ one run
    def _run_dir(self, candidate: Candidate, seed: int) -> str:
        return os.path.join(self.out, "runs", f"{candidate.key}_seed{seed}")

    def train_config(self, candidate: Candidate, seed: int):
        """The run's training options: the demo recipe, the budget, the candidate."""
        extra = dict(self.train_overrides)
        model_overrides = dict(extra.pop("model_overrides", {}))
        if candidate.image_size is not None and not is_root_resnet_spec(candidate.model):
            model_overrides["image_size"] = candidate.image_size
        if self.budget.iterations:
            iters = self.budget.iterations
            length = {"max_iters": iters, "warmup_iters": max(1, iters // 8), "ckpt_every": max(1, iters // 4)}
        else:     # the demo's schedule shape, laid out for the time by the budget hook
            length = {"time_budget": f"{self.budget.seconds}s", "ckpt_every": 200}
        options = {"model": candidate.model, "model_overrides": model_overrides, "data_root": self.data,
                   "dataset": "auto", "batch_size": self.batch_size, "workers": self.workers, "seed": seed,
                   "eval_every": 0, "keep_last": 1, "out_dir": self._run_dir(candidate, seed), **length, **extra}
        return make_config("demo", options)

    def _trainer(self, candidate: Candidate, cfg) -> Trainer:
        dist = init_distributed(self.device)
        if candidate.factory:
            return _UserModelTrainer(cfg, load_user_factory(candidate.factory), dist_info=dist, progress=False)
        return Trainer(cfg, dist_info=dist, progress=False)

    def _run_one(self, candidate: Candidate, seed: int, time_it: bool) -> dict:
        cfg = self.train_config(candidate, seed)
        trainer = self._trainer(candidate, cfg)
        val_set, trainer.val_set = trainer.val_set, None          # scored once, after the budget
        if val_set is None or len(val_set) == 0:
            raise CompareError(f"--data {self.data}: no validation images (split {cfg.val_split!r}); "
                               "compare scores every candidate on the validation split")
        resume = bool(self.resume and latest_checkpoint(cfg.out_dir))
        result = {"candidate": candidate.name, "label": candidate.label, "model": candidate.model,
                  "input_size": list(as_hw(trainer.model.config.image_size)), "seed": seed,
                  "budget": self.budget.text}
        start = time.perf_counter()
        try:
            with trainer:
                summary = trainer.train(resume=resume or None)
        except NonFiniteTrainingError as exc:
            result.update(status="diverged", map=None, diverged_at=exc.iteration, message=str(exc),
                          train_seconds=round(time.perf_counter() - start, 1))
            return result
        if summary.get("interrupted"):
            raise KeyboardInterrupt
        result.update(status="done", iterations=trainer.iteration,
                      train_seconds=round(summary.get("time_budget", {}).get("elapsed_seconds")
                                          or time.perf_counter() - start, 1))
        model = trainer.model.eval()
        result.update(detection_metrics(model, val_set, cfg.data_root if not cfg.data_root.startswith("synth:")
                                        else cfg.data_root[len("synth:"):], self.batch_size, trainer.workers))
        result.update(self._costs(model, trainer))
        if time_it:
            result.update(self._time(model, self._run_dir(candidate, seed)))
        return result

    def _costs(self, model, trainer) -> dict:
        h, w = as_hw(model.config.image_size)
        device = model.priors.device
        n = self.batch_size
        batch = torch.randn(n, 3, h, w, device=device)
        targets = {"boxes": torch.tensor([[[0.1, 0.1, 0.6, 0.6]]] * n), "labels": torch.ones(n, 1, dtype=torch.long)}
        train_peak = training_peak_bytes(copy.deepcopy(model), batch.contiguous(memory_format=trainer.memory_format),
                                         targets, lr=trainer.cfg.lr)
        return {"params": count_params(model), "flops": count_flops(model, (h, w)),
                "train_peak_mb": round(train_peak / 2**20, 1),
                "infer_peak_mb": round(inference_peak_bytes(copy.deepcopy(model).eval(), batch[:1]) / 2**20, 1)}

    def _cached(self, key: str, make: Callable[[], object]):
        """One predictor / session per run, shared by the batch-1 and the batch-8 timing."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def _runners(self, model, run_dir: str, batch: int, errors: dict) -> dict[str, Callable[[], object]]:
        """The deployment paths, each a callable on one fixed batch of ``batch`` images."""
        h, w = as_hw(model.config.image_size)
        device = model.priors.device
        x = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(batch)).to(device)
        images = torch.randint(0, 256, (batch, 3, h, w), dtype=torch.uint8,
                               generator=torch.Generator().manual_seed(batch)).numpy()
        sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
        runners: dict[str, Callable[[], object]] = {}
        if "eager" in self.runtimes:
            runners["eager"] = lambda: (model(x), sync())
        if "fast" in self.runtimes:
            fast = self._cached("fast", lambda: FastPredictor(model))
            runners["fast"] = lambda: (fast(x), sync())
        if device.type != "cpu" or not {"onnxruntime", "openvino"} & set(self.runtimes):
            return runners
        path = self._cache.get("onnx")
        if path is None and "onnx" not in errors:
            path = os.path.join(run_dir, "detector.onnx")
            try:
                export_detector_onnx(model, path)
                self._cache["onnx"] = path
            except Exception as exc:     # a network the exporter cannot take is timed on the other paths
                errors["onnx"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
                path = None
        if path is None:
            return runners
        if "onnxruntime" in self.runtimes:
            try:
                session = self._cached("ort", lambda: onnxruntime_session(path))
                runners["onnxruntime"] = lambda: session.run(None, {DETECTOR_INPUT: images})
            except ImportError:
                errors["onnxruntime"] = "not installed"
        if "openvino" in self.runtimes:
            try:
                compiled = self._cached("ov", lambda: openvino_model(path))
                request = compiled.create_infer_request()
                runners["openvino"] = lambda: request.infer({DETECTOR_INPUT: images})
            except ImportError:
                errors["openvino"] = "not installed"
        return runners

    def _time(self, model, run_dir: str) -> dict:
        """Batch-1 latency (ms) and batch-8 throughput (images / s) of each path, by the package's one
        timing helper (:mod:`scratchdet.engine.timing`): interleaved rounds, medians, same threads."""
        self._cache = {}
        errors: dict[str, str] = {}
        model = copy.deepcopy(model).eval().to(memory_format=torch.contiguous_format)
        latency = medians_ms(time_interleaved(self._runners(model, run_dir, 1, errors), self.timing_rounds))
        rounds8 = max(2, math.ceil(self.timing_rounds / 2))
        ms8 = medians_ms(time_interleaved(self._runners(model, run_dir, THROUGHPUT_BATCH, errors), rounds8))
        self._cache = {}
        return {"latency_ms": {k: round(v, 3) for k, v in latency.items()},
                "throughput": {k: round(THROUGHPUT_BATCH * 1000 / v, 1) for k, v in ms8.items()},
                "threads": runtime_threads(), "timing_rounds": self.timing_rounds, "timing_errors": errors}

    # ------------------------------------------------------------------ the comparison
    def _check_earlier(self, path: str, earlier: dict) -> None:
        if earlier.get("budget") != self.budget.text:
            raise CompareError(f"{path} was trained with --budget {earlier.get('budget')}, not {self.budget.text}: "
                               f"resume with --budget {earlier.get('budget')}, or choose another --out")

    def run(self) -> dict:
        """Run every run that is not finished, then write the report, the plot and results.json."""
        prepare_out_dir(self.out, self.resume, "comparison", CompareError)
        results = []
        for i, (candidate, seed) in enumerate(self.runs, start=1):
            run_dir = self._run_dir(candidate, seed)
            path = os.path.join(run_dir, "result.json")
            earlier = read_result(path) if self.resume else None
            what = f"[{i}/{len(self.runs)}] {candidate.label}, seed {seed}"
            if earlier is not None:
                self._check_earlier(path, earlier)
                results.append(earlier)
                self.log(f"{what}: finished earlier")
                continue
            self.log(f"{what}: training for {self.budget.text}")
            os.makedirs(run_dir, exist_ok=True)
            result = self._run_one(candidate, seed, time_it=seed == self.seeds[0])
            atomic_write_json(path, result)
            if result["map"] is None:
                self.log(f"    -> diverged at iteration {result['diverged_at']}")
            else:
                best = min(result.get("latency_ms", {}).items(), key=lambda kv: kv[1], default=None)
                fast = f", {best[1]:.1f} ms ({best[0]})" if best else ""
                self.log(f"    -> mAP {100 * result['map']:.1f} after {result['iterations']} iterations{fast}")
            results.append(result)
        return self.write_report(results)

    # ------------------------------------------------------------------ report
    def rows(self, results: list[dict]) -> list[dict]:
        """One row per candidate: the mean over seeds, the costs and timings of its first seed's run;
        sorted by Pareto front, then by latency."""
        rows = []
        for candidate in self.candidates:
            runs = [r for r in results if r["candidate"] == candidate.name and r.get("label") == candidate.label]
            if not runs:
                continue
            done = [r for r in runs if r["map"] is not None]
            first = next((r for r in runs if "latency_ms" in r), runs[0])
            maps = [r["map"] for r in done]
            smalls = [r["map_small"] for r in done if r.get("map_small") is not None]
            latency = first.get("latency_ms") or {}
            best_path = min(latency, key=latency.get) if latency else None
            rows.append({
                "label": candidate.label, "candidate": candidate.name, "input_size": first["input_size"],
                "seeds": len(runs), "diverged": len(runs) - len(done),
                "map": statistics.mean(maps) if maps else None,
                "map_std": statistics.stdev(maps) if len(maps) > 1 else None,
                "map_small": statistics.mean(smalls) if smalls else None,
                "ap": first.get("ap", {}), "params": first.get("params"), "flops": first.get("flops"),
                "train_peak_mb": first.get("train_peak_mb"), "infer_peak_mb": first.get("infer_peak_mb"),
                "latency_ms": latency, "throughput": first.get("throughput") or {},
                "best_path": best_path, "best_latency_ms": latency.get(best_path) if best_path else None,
                "iterations": first.get("iterations"), "train_seconds": first.get("train_seconds")})
        ranked = [r for r in rows if r["map"] is not None and r["best_latency_ms"] is not None]
        for row, front in zip(ranked, pareto_fronts([(r["map"], r["best_latency_ms"]) for r in ranked])):
            row["front"] = front
        return sorted(rows, key=lambda r: (r.get("front", math.inf), r["best_latency_ms"] or math.inf))

    def write_report(self, results: list[dict]) -> dict:
        rows = self.rows(results)
        machine = {"cpu": cpu_name(), "threads": runtime_threads(),
                   "device": self.device, "torch": torch.__version__}
        summary = {"data": self.data, "budget": self.budget.text, "seeds": self.seeds, "batch_size": self.batch_size,
                   "runtimes": list(self.runtimes), "machine": machine,
                   "candidates": [c.label for c in self.candidates], "rows": rows, "runs": results}
        atomic_write_json(os.path.join(self.out, "results.json"), summary)
        report = report_markdown(summary)
        with open(os.path.join(self.out, "report.md"), "w", encoding="utf-8") as f:
            f.write(report)
        summary["report"] = report
        summary["plot"] = plot_pareto(rows, os.path.join(self.out, "pareto.png"), self.budget.text)
        return summary


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _fmt(value, scale: float = 1.0, digits: int = 1, missing: str = "-") -> str:
    return missing if value is None else f"{value * scale:.{digits}f}"


def report_markdown(summary: dict) -> str:
    """The table, sorted by Pareto front (front 1 first), then by latency."""
    rows, machine = summary["rows"], summary["machine"]
    paths = [p for p in RUNTIMES if any(p in r["latency_ms"] for r in rows)]
    head = ["Front", "Model", "Input", "mAP", "AP small", "Params (M)", "GFLOPs",
            "Best latency B=1 (ms)", *[f"{p} B=1 (ms)" for p in paths], "Best B=8 (img/s)",
            "Train peak (MB)", "Infer peak (MB)", "Iterations"]
    lines = [f"# Detector comparison: {summary['data']}", "",
             f"Budget {summary['budget']} per run, the demo recipe (batch {summary['batch_size']}), seeds "
             f"{', '.join(map(str, summary['seeds']))}; timed on {machine['cpu']} ({machine['device']}, "
             f"{machine['threads']} threads for every runtime), torch {machine['torch']}. mAP: VOC07 on the "
             "validation split (mean over seeds); AP small: on objects under 32 px at the network input; "
             "latency: median of interleaved rounds, batch 1, network + NMS. Front 1 is the Pareto front "
             "(no other candidate is both more accurate and faster).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        mean = _fmt(r["map"], 100)
        if r["map_std"] is not None:
            mean += f" ± {100 * r['map_std']:.1f}"
        if r["diverged"]:
            mean = "NAN" if r["map"] is None else f"{mean} ({r['diverged']} diverged)"
        best_b8 = max(r["throughput"].values(), default=None)
        cells = [str(r["front"] + 1) if "front" in r else "-", f"`{r['label']}`",
                 "x".join(map(str, r["input_size"])), mean, _fmt(r["map_small"], 100),
                 _fmt(r["params"], 1e-6, 2), _fmt(r["flops"], 1e-9, 3),
                 f"{_fmt(r['best_latency_ms'])} ({r['best_path']})" if r["best_path"] else "-",
                 *[_fmt(r["latency_ms"].get(p)) for p in paths], _fmt(best_b8),
                 _fmt(r["train_peak_mb"], 1, 0), _fmt(r["infer_peak_mb"], 1, 1), str(r["iterations"] or "-")]
        lines.append("| " + " | ".join(cells) + " |")
    front = [r for r in rows if r.get("front") == 0]
    if front:
        best = max(front, key=lambda r: r["map"])
        fastest = min(front, key=lambda r: r["best_latency_ms"])
        lines += ["", f"Most accurate: `{best['label']}` ({100 * best['map']:.1f} mAP, "
                      f"{best['best_latency_ms']:.1f} ms). Fastest on the front: `{fastest['label']}` "
                      f"({fastest['best_latency_ms']:.1f} ms, {100 * fastest['map']:.1f} mAP)."]
    classes = sorted({c for r in rows for c in r["ap"]})
    if classes:
        lines += ["", "AP per class (%):", "", "| Model | " + " | ".join(classes) + " |",
                  "|---|" + "---|" * len(classes)]
        for r in rows:
            lines.append(f"| `{r['label']}` | " + " | ".join(_fmt(r["ap"].get(c), 100) for c in classes) + " |")
    lines += ["", "![mAP against latency](pareto.png)", ""]
    return "\n".join(lines)


def plot_pareto(rows: list[dict], path: str, budget: str) -> str | None:
    """mAP against batch-1 latency (log scale), marker area by parameters, the front drawn, each
    point labelled. None when matplotlib is not installed or nothing was timed."""
    try:
        import matplotlib
        import matplotlib.ticker
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    points = [r for r in rows if r["map"] is not None and r["best_latency_ms"] is not None]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    largest = max(r["params"] or 1 for r in points)
    for r in points:
        on_front = r.get("front") == 0
        ax.scatter(r["best_latency_ms"], 100 * r["map"], s=40 + 900 * (r["params"] or 0) / largest,
                   alpha=0.6, color="tab:red" if on_front else "tab:blue", edgecolors="black", linewidths=0.5)
        ax.annotate(r["label"], (r["best_latency_ms"], 100 * r["map"]), fontsize=7, xytext=(5, 4),
                    textcoords="offset points")
    xs_all = [r["best_latency_ms"] for r in points]
    ax.set_xscale("log")
    left, right = min(xs_all) / 1.3, max(xs_all) * 2.5          # room for the labels on the right
    ax.set_xlim(left, right)
    front = sorted((r for r in points if r.get("front") == 0), key=lambda r: r["best_latency_ms"])
    if front:   # the best accuracy reachable within each latency: a staircase, flat to the right edge
        xs = [r["best_latency_ms"] for r in front] + [right]
        ys = [100 * r["map"] for r in front]
        ax.step(xs, ys + ys[-1:], where="post", color="tab:red", linewidth=1.2, label="Pareto front")
        ax.legend(loc="best", fontsize=8)
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("latency, batch 1, best deployment path (ms, log scale)")
    ax.set_ylabel("VOC07 mAP on the validation split (%)")
    ax.set_title(f"Detectors trained from scratch, {budget} each (marker area ~ parameters)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
