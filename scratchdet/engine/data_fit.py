"""Fitting the model to the training data at the start of a run, from the annotations alone (no
image is decoded; an image whose annotation lacks its size has its file header read):

- ``image_size=auto``: the network input from the training images' sizes and their smallest
  objects (:func:`choose_image_size`, the rule in its docstring and docs/TRAINING.md); under a
  ``time_budget``, no larger than a size at which the recipe's ``max_iters`` steps still fit
  (:func:`fit_size_to_budget`, from two timed training passes);
- the priors' best possible recall over the training boxes, printed once and kept in the run
  (``data_fit.json``, the summary); with ``priors=auto`` and a recall under
  ``prior_recall_threshold``, the prior shapes refitted per source
  (:mod:`scratchdet.models.prior_fit`) and saved in ``model.config.prior_shapes``.

With ``image_size`` empty and ``priors=default`` (the defaults) the model and the data are
exactly as without this step: it only measures and prints.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..data import SSDTransform
from ..models.prior_fit import LOW_IOU, prior_recall, refit_priors
from ..models.priors import source_prior_shapes
from ..structures.errors import BadImageError
from ..structures.image import as_hw, read_image_size
from .config import TrainConfig, parse_duration
from .data_setup import build_transforms, model_config

__all__ = ["Annotations", "collect_annotations", "image_size_limits", "choose_image_size", "check_priors", "fit_to_data", "write_data_fit",
           "fit_size_to_budget", "training_pass_seconds", "MIN_OBJECT_PX", "OBJECT_PERCENTILE", "SIZE_STEP"]

MIN_OBJECT_PX = 8.0        # image_size=auto keeps the OBJECT_PERCENTILE-th percentile object at least this big
OBJECT_PERCENTILE = 5.0
SIZE_STEP = 32             # image_size=auto picks a multiple of this
BUDGET_COMPUTE_SHARE = 0.8  # under a time budget, the share of it the forward/backward passes may use
                            # (data loading, evaluation and saving take the rest)


@dataclass(frozen=True)
class Annotations:
    """The training set's geometry: each image's (w, h) and each box in its image's pixels."""
    image_sizes: np.ndarray    # [M, 2] float64 (w, h)
    boxes: np.ndarray          # [N, 4] float64 pixel (x1, y1, x2, y2)
    image_index: np.ndarray    # [N] the image each box is in

    def normalised_boxes(self) -> torch.Tensor:
        """``[N, 4]`` boxes normalised to [0, 1] of their image, i.e. of the network input."""
        wh = self.image_sizes[self.image_index]
        return torch.from_numpy(self.boxes / np.concatenate([wh, wh], 1)).float()

    def object_scales(self) -> np.ndarray:
        """``[N]`` each box's sqrt(w h) as a fraction of the (square) network input's side."""
        normalised = self.normalised_boxes().double().numpy()
        return np.sqrt((normalised[:, 2] - normalised[:, 0]) * (normalised[:, 3] - normalised[:, 1]))


def collect_annotations(dataset) -> Annotations | None:
    """The boxes and image sizes of a data set with ``records`` (the VOC, COCO and YOLO readers);
    None for other data sets. Images whose size is unknown and unreadable are left out."""
    records = getattr(dataset, "records", None)
    if records is None:
        return None
    sizes, boxes, index = [], [], []
    for rec in records:
        width, height = rec.width, rec.height
        if not (width and height):
            try:
                width, height = read_image_size(rec.image_path)      # the header, not the pixels
            except BadImageError:
                continue
        rec_boxes = np.asarray(rec.boxes, np.float64).reshape(-1, 4)
        index.append(np.full(len(rec_boxes), len(sizes)))
        sizes.append((float(width), float(height)))
        boxes.append(rec_boxes)
    return Annotations(np.asarray(sizes, np.float64).reshape(-1, 2),
                       np.concatenate(boxes) if boxes else np.zeros((0, 4)),
                       np.concatenate(index).astype(np.int64) if index else np.zeros(0, np.int64))


def image_size_limits(preset_size) -> tuple[int, int]:
    """What ``image_size=auto`` may pick for a preset of input ``preset_size``: from half to twice
    its shorter side, in multiples of SIZE_STEP (half: the preset's layout keeps working; twice:
    four times the compute per image)."""
    side = min(as_hw(preset_size))
    low = max(SIZE_STEP, math.ceil(side / 2 / SIZE_STEP) * SIZE_STEP)
    return low, max(low, math.floor(2 * side / SIZE_STEP) * SIZE_STEP)


def choose_image_size(annotations: Annotations, preset_size) -> tuple[int, str]:
    """``image_size=auto``: the smallest multiple of SIZE_STEP at which the OBJECT_PERCENTILE-th
    percentile object (sqrt(w h) of the box, the image resized to the square input) is at least
    MIN_OBJECT_PX pixels; no larger than the training images' median longer side (rounded up:
    upsampling adds no detail); then clamped to :func:`image_size_limits` of the preset. With no
    boxes, the preset's size. Returns (side, the reason, one line)."""
    low, high = image_size_limits(preset_size)
    scales = annotations.object_scales()
    preset_side = min(as_hw(preset_size))
    if len(scales) == 0:
        return preset_side, f"no training boxes: the preset's {preset_side} px"
    small = float(np.percentile(scales, OBJECT_PERCENTILE))
    needed = MIN_OBJECT_PX / max(small, 1e-9)
    size = math.ceil(needed / SIZE_STEP) * SIZE_STEP
    image_side = float(np.median(annotations.image_sizes.max(1)))
    cap = math.ceil(image_side / SIZE_STEP) * SIZE_STEP
    why = f"{needed:.0f} px keeps the {OBJECT_PERCENTILE:g}th-percentile object at {MIN_OBJECT_PX:g} px"
    if size > cap:
        size, why = cap, why + f", capped at the images' median longer side ({image_side:.0f} px)"
    if not low <= size <= high:
        size = min(max(size, low), high)
        why += f", clamped to the preset's limits {low}..{high} px (half to twice its {preset_side} px)"
    return size, (f"{why}; the {OBJECT_PERCENTILE:g}th-percentile object is {small * size:.1f} px "
                  f"at {size} px ({len(scales)} boxes, {len(annotations.image_sizes)} images)")


def fit_size_to_budget(auto_size: int, preset_side: int, budget_seconds: float, min_iters: int,
                       seconds_at: Callable[[int], float | None]) -> tuple[int, str]:
    """``image_size=auto`` under a time budget: the largest multiple of SIZE_STEP from ``auto_size``
    down to ``preset_side`` at which ``min_iters`` training steps (the recipe's own length) fit in
    BUDGET_COMPUTE_SHARE of ``budget_seconds``. A larger input that gets a fraction of the recipe's
    steps learns less than the preset's size with all of them (3 minutes, 320-px images: 256 px
    got 77 steps and 0.003 mAP, 128 px 347 steps and 0.49). ``seconds_at(size)``: one training pass
    at that size, measured at ``preset_side`` and ``auto_size``; between them the cost is taken as
    linear in the pixels. Returns (side, the reason, one line)."""
    if auto_size <= preset_side:
        return auto_size, "at or under the preset's size: no budget check needed"
    t_low, t_high = seconds_at(preset_side), seconds_at(auto_size)
    if t_low is None or t_high is None:
        return auto_size, "the model has no forward_raw to time: the budget not checked"
    span = auto_size ** 2 - preset_side ** 2

    def seconds(size: int) -> float:
        return t_low + (t_high - t_low) * (size ** 2 - preset_side ** 2) / span

    usable = BUDGET_COMPUTE_SHARE * budget_seconds
    for size in range(auto_size, preset_side, -SIZE_STEP):
        if usable / seconds(size) >= min_iters:
            break
    else:
        size = preset_side
    fits = int(usable / seconds(size))
    why = (f"the time budget fits ~{fits} training steps at {size} px (one step {seconds(size):.2f} s measured/"
           f"interpolated, {100 * BUDGET_COMPUTE_SHARE:.0f}% of {budget_seconds:.0f} s), the recipe needs {min_iters}")
    if size < auto_size:
        why += f": {auto_size} px would fit ~{int(usable / t_high)}"
    return size, why


def training_pass_seconds(model: torch.nn.Module, batch_size: int, size: int, repeats: int = 3) -> float | None:
    """Seconds of one forward and backward pass of ``model.forward_raw`` (on its device, in its
    memory format) on a random batch of ``batch_size`` images of ``size`` px: the fastest of
    ``repeats`` (the first pays for allocation and kernel choice); None for a model without
    ``forward_raw``."""
    if not hasattr(model, "forward_raw"):
        return None
    device = next(model.parameters()).device
    # a local generator: the run's random streams (CPU and CUDA) are not drawn from
    images = torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    model.train()
    best = math.inf
    for _ in range(repeats):
        if images.device.type == "cuda":
            torch.cuda.synchronize(images.device)
        start = time.perf_counter()
        loc, logits = model.forward_raw(images)
        (loc.float().mean() + logits.float().mean()).backward()
        if images.device.type == "cuda":
            torch.cuda.synchronize(images.device)
        best = min(best, time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return best


def check_priors(model, annotations: Annotations | None, mode: str, threshold: float,
                 log: Callable[[str], None]) -> tuple[dict, tuple | None]:
    """Measure the model's priors over the training boxes and, for ``mode`` "auto" with a recall
    under ``threshold``, refit them. Returns (the report, the fitted ``prior_shapes`` or None)."""
    if annotations is None:
        log("priors: the training set gives no annotations to measure the priors on (no records)")
        return {"priors": mode, "measured": False}, None
    boxes = annotations.normalised_boxes()
    iou = model.config.iou_threshold
    before = prior_recall(model.priors.detach().cpu(), boxes, iou)
    log(f"priors: {before.line()}")
    report = {"priors": mode, "measured": True, "before": before.to_dict(), "refit": False}
    if mode != "auto" or len(boxes) == 0:
        return report, None
    if before.recall >= threshold:
        log(f"priors: recall {before.recall:.2f} >= prior_recall_threshold {threshold:g}: SSD's priors kept")
        return report, None
    shapes = source_prior_shapes(model.config, len(model.feature_sizes))
    fit = refit_priors(boxes, shapes, model.config.image_size, model.feature_sizes, iou, model.config.clip_priors)
    report.update(after=fit.after.to_dict(), refit=fit.accepted)
    verdict = "fitted priors used" if fit.accepted else "no better: SSD's priors kept"
    log(f"priors: refit per source (k-means, 1 - IoU): recall {before.recall:.2f} -> {fit.after.recall:.2f} at "
        f"IoU {iou:g}, boxes best IoU < {LOW_IOU:g} {100 * before.low_iou_share:.0f}% -> "
        f"{100 * fit.after.low_iou_share:.0f}%: {verdict}")
    return report, (fit.flat_shapes() if fit.accepted else None)


def _retarget(dataset, transform) -> None:
    """Give ``dataset`` the ``transform`` (of the new input size) if it has an SSDTransform of that kind."""
    current = getattr(dataset, "transform", None)
    if isinstance(current, SSDTransform) and current.train == transform.train:
        dataset.transform = transform


def fit_to_data(cfg: TrainConfig, train_set, val_set, build: Callable[[dict], torch.nn.Module],
                log: Callable[[str], None] | None = None,
                prepare: Callable[[torch.nn.Module], torch.nn.Module] = lambda model: model,
                agree: Callable[[int], int] = lambda size: size,
                timing_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                ) -> tuple[torch.nn.Module, dict]:
    """The model for ``cfg`` fitted to ``train_set``: ``build(model_overrides)`` builds it (on the
    host). ``image_size=auto`` picks the input size (and gives both data sets transforms of that
    size); the priors' recall is measured and printed; ``priors=auto`` refits them. A refitted
    model is built from the same random state as the first, so only its priors differ. The budget
    check of ``image_size=auto`` times its training passes inside ``timing_context()`` (the run's
    precision). Returns (the model, the report saved in the run)."""
    log = log or (lambda line: None)
    annotations = collect_annotations(train_set)
    overrides, report = dict(cfg.model_overrides), {}
    if cfg.image_size == "auto":
        spec = model_config(cfg)
        if annotations is None:
            log(f"image_size: auto: the training set gives no annotations; the model's {spec.image_size} px kept")
        else:
            size, why = choose_image_size(annotations, spec.image_size)
            budget = parse_duration(cfg.time_budget)
            preset_side = min(as_hw(spec.image_size))
            if budget and size > preset_side:
                def seconds_at(side: int) -> float | None:
                    with timing_context():                   # the run's precision (bfloat16 autocast or not)
                        return training_pass_seconds(prepare(build({**overrides, "image_size": side})), cfg.batch_size, side)
                with torch.random.fork_rng(devices=[]):      # the timing builds models: the run's random state untouched
                    fitted, budget_why = fit_size_to_budget(size, preset_side, budget, cfg.max_iters, seconds_at)
                fitted = agree(fitted)                        # rank 0's measurement decides on every rank
                why += f"; {size} px reduced to {fitted} px: {budget_why}" if fitted != size else f"; {budget_why}"
                size = fitted
            log(f"image_size: auto -> {size} px ({why})")
            overrides["image_size"] = size
            report["image_size"] = {"size": size, "reason": why}
            train_tf, val_tf = build_transforms(cfg, spec.replace(image_size=size))
            _retarget(train_set, train_tf)
            if val_set is not None:
                _retarget(val_set, val_tf)
    rng = torch.get_rng_state()
    model = build(overrides)
    report["priors"], shapes = check_priors(model, annotations, cfg.priors, cfg.prior_recall_threshold, log)
    if shapes is not None:
        torch.set_rng_state(rng)
        model = build({**overrides, "prior_shapes": shapes})
    return model, report


def write_data_fit(out_dir: str, report: dict) -> None:
    """``data_fit.json`` in the run folder: what :func:`fit_to_data` measured and chose."""
    with open(os.path.join(out_dir, "data_fit.json"), "w") as f:
        json.dump(report, f, indent=2)
