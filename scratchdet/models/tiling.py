"""Tiled inference: detect in images larger than the network at their native resolution.

An image is cut into overlapping ``tile`` x ``tile`` windows (:func:`tile_grid`; the last window of a
row or column is flush with the image edge, an image smaller than a tile is one window), each window
goes through the detector as an image of its own, its boxes are shifted back into the image's pixels,
and the windows' detections are merged:

1. **the edge rule** (:func:`edge_keep`): a box that touches an interior edge of its window is the
   visible part of an object the window cuts. It is dropped when it lies inside the overlap band that
   the neighbouring window on that side also covers, away from that window's far edge: the neighbour
   then sees the whole object and reports its full box. An object larger than the overlap is cut by
   both windows and both partial boxes are kept (NMS below, or the whole-image pass, takes it from
   there).
2. optionally (``whole_image=True``, SAHI's "standard prediction") the detections of the whole image
   resized to the network are added, so objects larger than a tile are still found. Off by default:
   on the small-object data this exists for, the resized image adds mostly low-scoring false boxes
   (docs/DEPLOY_TILING.md has the measurement).
3. class-wise NMS over everything (:func:`scratchdet.ops.batched_nms`, the model's ``nms_threshold``),
   then the ``keep_top_k`` best.

The detector is any ``predict_fn(images) -> [{"boxes", "scores", "labels"}]`` with boxes in each
given image's pixels (``SSD.predict`` and ``FastPredictor.predict`` without ``tile``), so the model's
own preprocessing and thresholds apply to every window.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, Sequence

import torch
from PIL import Image

from .. import ops
from ..structures.errors import ConfigError
from ..structures.image import to_pil_rgb

__all__ = ["MIN_TILE", "DEFAULT_OVERLAP", "check_tiling", "tiling_plan", "axis_windows", "tile_grid", "edge_keep",
           "merge_detections", "predict_tiled"]

MIN_TILE = 32
DEFAULT_OVERLAP = 0.2
EDGE_MARGIN = 2.0      # px: a box within this of a window edge "touches" it (box regression is not exact)

PredictFn = Callable[[list], list]


def check_tiling(tile, overlap) -> tuple[int, float]:
    """``(tile, overlap)`` checked: tile a whole number >= 32 px, overlap a fraction in [0, 1);
    :class:`ConfigError` naming the argument otherwise (NaN and inf included)."""
    if isinstance(tile, bool) or not isinstance(tile, numbers.Real) or not math.isfinite(tile) \
            or tile != int(tile) or tile < MIN_TILE:
        raise ConfigError(f"tile must be a whole number of pixels >= {MIN_TILE}, got {tile!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, numbers.Real) or not math.isfinite(overlap) \
            or not 0 <= overlap < 1:
        raise ConfigError(f"tile_overlap must be a fraction in [0, 1), got {overlap!r}")
    return int(tile), float(overlap)


def tiling_plan(tile, overlap, whole_image: bool, settings: dict) -> dict | None:
    """What ``predict(..., tile=...)`` hands :func:`scratchdet.models.ssd.predict_images`: ``None``
    when ``tile`` is None (no tiling), else the checked tiling and the merge's NMS settings
    (``settings``: the predictor's resolved detection settings)."""
    if tile is None:
        return None
    tile, overlap = check_tiling(tile, overlap)
    return {"tile": tile, "overlap": overlap, "whole_image": bool(whole_image),
            "nms_threshold": settings["nms_threshold"], "keep_top_k": settings["keep_top_k"]}


def axis_windows(length: int, tile: int, overlap: float) -> list[tuple[int, int]]:
    """The ``(start, end)`` windows along one axis of ``length`` px: ``tile`` long, the first at 0 and
    the last ending at ``length``, as few as a step of at most ``round(tile * (1 - overlap))`` needs,
    evenly spaced (so every overlap is at least the asked one, and no last window nearly repeats the one
    before); one window ``(0, length)`` when the axis is no longer than a tile."""
    if length <= tile:
        return [(0, length)]
    step = max(1, round(tile * (1.0 - overlap)))
    gaps = math.ceil((length - tile) / step)
    starts = [round(i * (length - tile) / gaps) for i in range(gaps + 1)]
    return [(s, s + tile) for s in starts]


def tile_grid(width: int, height: int, tile: int, overlap: float = DEFAULT_OVERLAP) -> list[tuple[int, int, int, int]]:
    """The windows ``(x1, y1, x2, y2)`` (pixels, x2/y2 exclusive) covering a ``width`` x ``height``
    image, row by row. Every pixel is in at least one window."""
    tile, overlap = check_tiling(tile, overlap)
    xs, ys = axis_windows(int(width), tile, overlap), axis_windows(int(height), tile, overlap)
    return [(x1, y1, x2, y2) for y1, y2 in ys for x1, x2 in xs]


def _axis_keep(lo: torch.Tensor, hi: torch.Tensor, windows: list[tuple[int, int]], i: int,
               margin: float) -> torch.Tensor:
    """Along one axis: False for the boxes ``[lo, hi]`` of window ``i`` that the neighbour on a cut side sees whole."""
    start, end = windows[i]
    keep = torch.ones_like(lo, dtype=torch.bool)
    if i > 0:                     # the window before covers [prev_start, prev_end), prev_end > start when overlapping
        prev_end = windows[i - 1][1]
        keep &= ~((lo <= start + margin) & (hi < prev_end - margin))
    if i + 1 < len(windows):
        next_start = windows[i + 1][0]
        keep &= ~((hi >= end - margin) & (lo > next_start + margin))
    return keep


def edge_keep(boxes: torch.Tensor, window: tuple[int, int, int, int], width: int, height: int, tile: int,
              overlap: float, margin: float = EDGE_MARGIN) -> torch.Tensor:
    """Which ``boxes [N, 4]`` (image pixels) found in ``window`` (one of :func:`tile_grid`'s) to keep:
    a box touching an interior edge is dropped when it lies within the overlap band the neighbour on
    that side also covers (so the neighbour has the whole object)."""
    xs, ys = axis_windows(int(width), tile, overlap), axis_windows(int(height), tile, overlap)
    ix = xs.index((window[0], window[2]))
    iy = ys.index((window[1], window[3]))
    boxes = boxes.float()
    return (_axis_keep(boxes[:, 0], boxes[:, 2], xs, ix, margin)
            & _axis_keep(boxes[:, 1], boxes[:, 3], ys, iy, margin))


def merge_detections(parts: Sequence[dict], nms_threshold: float, keep_top_k: int) -> dict:
    """Detections (dicts of ``boxes [n, 4]``, ``scores [n]``, ``labels [n]`` in one image's pixels) ->
    one dict: class-wise NMS over all of them (:func:`scratchdet.ops.batched_nms`), then the
    ``keep_top_k`` best, best first."""
    boxes = torch.cat([torch.as_tensor(p["boxes"], dtype=torch.float32).reshape(-1, 4) for p in parts])
    scores = torch.cat([torch.as_tensor(p["scores"], dtype=torch.float32).reshape(-1) for p in parts])
    labels = torch.cat([torch.as_tensor(p["labels"], dtype=torch.int64).reshape(-1) for p in parts])
    keep = ops.batched_nms(boxes, scores, labels, nms_threshold)[:keep_top_k]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


def _shifted(result: dict, x: int, y: int) -> dict:
    boxes = torch.as_tensor(result["boxes"], dtype=torch.float32).reshape(-1, 4).cpu()
    return {"boxes": boxes + torch.tensor([x, y, x, y], dtype=torch.float32),
            "scores": torch.as_tensor(result["scores"]).float().cpu(),
            "labels": torch.as_tensor(result["labels"]).long().cpu()}


def predict_tiled(predict_fn: PredictFn, images, tile: int, overlap: float, nms_threshold: float,
                  keep_top_k: int, whole_image: bool = False, margin: float = EDGE_MARGIN) -> list[dict]:
    """Tiled detection of each image (see the module docstring); one result dict per image, in
    its pixels, as ``predict`` returns. ``predict_fn`` takes a list of PIL images (the windows)."""
    tile, overlap = check_tiling(tile, overlap)
    if not isinstance(images, (list, tuple)):
        images = [images]
    results = []
    for image in images:
        pil: Image.Image = to_pil_rgb(image)
        width, height = pil.size
        windows = tile_grid(width, height, tile, overlap)
        if len(windows) == 1 and not whole_image:      # one window = the image: plain predict, bit for bit
            results.append(predict_fn([pil])[0])
            continue
        found = predict_fn([pil.crop(w) for w in windows])
        parts = []
        for window, result in zip(windows, found):
            part = _shifted(result, window[0], window[1])
            keep = edge_keep(part["boxes"], window, width, height, tile, overlap, margin)
            parts.append({k: v[keep] for k, v in part.items()})
        if whole_image:
            parts.append(_shifted(predict_fn([pil])[0], 0, 0))
        results.append(merge_detections(parts, nms_threshold, keep_top_k))
    return results
