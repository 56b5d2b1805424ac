"""Priors against data: how well a prior set can match a set of ground-truth boxes, and a refit of
the prior shapes to them (``scratchdet train --set priors=auto``).

**Best possible recall (BPR)** at IoU t: the share of ground-truth boxes whose best IoU with any
prior (at its real position on its source's grid) is >= t, i.e. the boxes the matcher can label
foreground by overlap alone. SSD's matcher still forces every box onto its best prior, but a box
whose best IoU is low gets one poorly fitting positive and its regression starts far away; the
share of boxes with best IoU < 0.3 says how many such boxes there are.

**The refit** keeps the layout (sources, grids, centres, and the number of priors per location,
so the head shapes stay the same) and changes only one location's shapes per source:

1. each box goes to the source SSD's scale rule would give it: the one whose scale (the side of
   its first, min-size square prior) is nearest in log scale to the box's sqrt(w h);
2. per source, k-means on the boxes' (w, h) with the distance 1 - IoU of centred boxes
   (``scratchdet.ops.box_iou``), k = priors per location, started from that source's SSD shapes
   (so it is deterministic: no random seeding), centroids the mean (w, h) of their boxes, an
   empty cluster moved to the worst-covered box; a source with fewer boxes than k keeps its shapes;
3. the refit is kept only if it raises the BPR (as YOLOv5's autoanchor keeps new anchors only
   when they are better).

Boxes are (x1, y1, x2, y2) normalised to [0, 1] of the image (so of the network input, which is
the image resized), shapes normalised (w, h): IoU does not change when an axis is scaled, so
normalised coordinates give the IoU of the network input's pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ..ops import box_iou
from .priors import tile_priors

__all__ = ["PriorRecall", "PriorFit", "prior_recall", "best_prior_iou", "assign_to_sources", "kmeans_shapes",
           "fit_prior_shapes", "refit_priors", "LOW_IOU"]

LOW_IOU = 0.3             # a box whose best IoU is under this is poorly covered
_CHUNK = 2048             # boxes per box_iou call: [2048, P] floats stays small for SSD300's 8732 priors


@dataclass(frozen=True)
class PriorRecall:
    """The BPR of a prior set over some boxes, and the share of boxes poorly covered."""
    recall: float             # share of boxes with best IoU >= iou_threshold
    low_iou_share: float      # share of boxes with best IoU < LOW_IOU
    num_boxes: int
    iou_threshold: float

    def line(self) -> str:
        return (f"best possible recall {self.recall:.2f} at IoU {self.iou_threshold:g} "
                f"({100 * self.low_iou_share:.0f}% of boxes best IoU < {LOW_IOU:g})")

    def to_dict(self) -> dict:
        return {"recall": self.recall, "low_iou_share": self.low_iou_share, "num_boxes": self.num_boxes,
                "iou_threshold": self.iou_threshold}


def _cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cxcy, wh = boxes[:, :2], boxes[:, 2:]
    return torch.cat([cxcy - wh / 2, cxcy + wh / 2], 1)


def best_prior_iou(priors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``[N]``: each box's best IoU over ``priors`` ``[P, 4]`` (cx, cy, w, h); ``boxes`` ``[N, 4]`` xyxy."""
    priors_xyxy = _cxcywh_to_xyxy(priors.float())
    boxes = boxes.float().reshape(-1, 4)
    if len(boxes) == 0 or len(priors_xyxy) == 0:
        return torch.zeros(len(boxes))
    return torch.cat([box_iou(boxes[i:i + _CHUNK], priors_xyxy).amax(1) for i in range(0, len(boxes), _CHUNK)])


def prior_recall(priors: torch.Tensor, boxes: torch.Tensor, iou_threshold: float = 0.5) -> PriorRecall:
    """The BPR of ``priors`` over ``boxes`` (normalised xyxy) at ``iou_threshold``; 1.0 without boxes."""
    best = best_prior_iou(priors, boxes)
    n = len(best)
    if n == 0:
        return PriorRecall(1.0, 0.0, 0, iou_threshold)
    return PriorRecall(float((best >= iou_threshold).double().mean()), float((best < LOW_IOU).double().mean()),
                       n, iou_threshold)


def _centred(wh: torch.Tensor) -> torch.Tensor:
    return torch.cat([-wh / 2, wh / 2], 1)


def assign_to_sources(wh: torch.Tensor, source_shapes: Sequence[Sequence[tuple[float, float]]]) -> torch.Tensor:
    """``[N]`` source index of each box (w, h): SSD's scale rule, the source whose first (min-size)
    square prior's side is nearest in log scale to the box's sqrt(w h)."""
    scales = torch.tensor([math.log(math.sqrt(s[0][0] * s[0][1])) for s in source_shapes], dtype=torch.float64)
    box_scale = 0.5 * torch.log(wh[:, 0].double() * wh[:, 1].double())
    return (box_scale[:, None] - scales[None]).abs().argmin(1)


def kmeans_shapes(wh: torch.Tensor, init: torch.Tensor, max_iters: int = 100) -> torch.Tensor:
    """k-means of (w, h) ``[N, 2]`` with the distance 1 - IoU (centred boxes), from the centroids
    ``init`` ``[K, 2]``; a centroid is the mean (w, h) of its boxes. A centroid left without boxes
    moves to the box worst covered by the others (the lowest best IoU), so no prior is wasted.
    Deterministic (no random start); stops when no box changes cluster."""
    wh, centroids = wh.float(), init.float().clone()
    assigned = None
    for _ in range(max_iters):
        iou = box_iou(_centred(wh), _centred(centroids))
        nearest = iou.argmax(1)                                    # ties: the lowest index
        counts = torch.bincount(nearest, minlength=len(centroids))
        for k in torch.nonzero(counts == 0).flatten().tolist():
            if len(wh) <= int((counts > 0).sum()):
                break
            worst = int(iou.amax(1).argmin())                      # ties: the lowest index
            centroids[k] = wh[worst]
            iou = box_iou(_centred(wh), _centred(centroids))
            nearest = iou.argmax(1)
            counts = torch.bincount(nearest, minlength=len(centroids))
        if assigned is not None and torch.equal(nearest, assigned):
            break
        assigned = nearest
        for k in range(len(centroids)):
            members = wh[assigned == k]
            if len(members):
                centroids[k] = members.mean(0)
    return centroids


def fit_prior_shapes(wh: torch.Tensor, source_shapes: Sequence[Sequence[tuple[float, float]]]
                     ) -> list[list[tuple[float, float]]]:
    """Per source, one location's shapes refitted to the boxes (w, h) ``[N, 2]`` it gets by the
    scale rule (k-means, k = its number of shapes, started from its shapes); a source with fewer
    boxes than shapes keeps its own."""
    source = assign_to_sources(wh, source_shapes)
    fitted = []
    for k, shapes in enumerate(source_shapes):
        members = wh[source == k]
        if len(members) < len(shapes):
            fitted.append([tuple(map(float, s)) for s in shapes])
            continue
        centroids = kmeans_shapes(members, torch.tensor(shapes, dtype=torch.float32))
        fitted.append([(float(w), float(h)) for w, h in centroids.tolist()])
    return fitted


@dataclass(frozen=True)
class PriorFit:
    """A refit: the recall before and after, the fitted shapes, and whether they were kept."""
    before: PriorRecall
    after: PriorRecall
    shapes: list              # per source, one location's (w, h) (the fitted ones, kept or not)
    accepted: bool            # the refit raised the recall

    def flat_shapes(self) -> tuple[tuple[float, ...], ...]:
        """As ``SSDConfig.prior_shapes``: per source, (w, h, w, h, ...)."""
        return tuple(tuple(v for wh in shapes for v in wh) for shapes in self.shapes)


def refit_priors(boxes: torch.Tensor, source_shapes: Sequence[Sequence[tuple[float, float]]], image_size,
                 feature_sizes, iou_threshold: float = 0.5, clip: bool = False) -> PriorFit:
    """Refit the shapes (:func:`fit_prior_shapes`) to ``boxes`` (normalised xyxy ``[N, 4]``) and
    compare the BPR of the priors tiled over ``feature_sizes`` before and after."""
    boxes = boxes.float().reshape(-1, 4)
    before = prior_recall(tile_priors(image_size, feature_sizes, source_shapes, clip=clip), boxes, iou_threshold)
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp_min(1e-6)
    shapes = fit_prior_shapes(wh, source_shapes)
    after = prior_recall(tile_priors(image_size, feature_sizes, shapes, clip=clip), boxes, iou_threshold)
    return PriorFit(before, after, shapes, after.recall > before.recall)
