"""Accuracy on small objects: VOC mAP restricted to objects under 32 px at the network input.

COCO's rule, in VOC's metric: a ground truth counts when its area *at the network input* is
below ``max_side**2`` (larger ones become "difficult": matching one is neither TP nor FP), and
a detection that is not small itself is ignored unless it matches (so the large objects that a
detector finds are not false positives of the small-object metric). The sizes are measured
after resizing the image to the network's input, since that is what the first convolution
sees; COCO's own AP_S (pycocotools) measures them in the original image.
"""
from __future__ import annotations

import numpy as np
import torch

from .voc import voc_eval

__all__ = ["SMALL_SIDE", "small_object_map"]

SMALL_SIDE = 32   # COCO's small objects: area < 32**2


def _area_at_input(boxes, scale_x: float, scale_y: float, offset: float) -> np.ndarray:
    b = np.asarray(boxes.detach().cpu() if hasattr(boxes, "detach") else boxes, np.float64).reshape(-1, 4)
    return (b[:, 2] - b[:, 0] + offset) * scale_x * (b[:, 3] - b[:, 1] + offset) * scale_y


def small_object_map(detections, annotations, image_sizes, input_size, max_side: float = SMALL_SIDE,
                     use_07_metric: bool = True, pixel_inclusive: bool = True) -> dict | None:
    """VOC mAP on the objects smaller than ``max_side`` x ``max_side`` at the network input.

    ``image_sizes``: each image's (width, height); ``input_size``: the network's (height, width).
    Returns ``voc_eval``'s dict plus ``num_small`` (the small, non-difficult ground truths), or
    None when there are none (the metric is then not available, rather than 0).
    """
    in_h, in_w = input_size
    offset = 1.0 if pixel_inclusive else 0.0
    max_area = float(max_side) ** 2
    dets, anns, num_small = [], [], 0
    for det, ann, (w, h) in zip(detections, annotations, image_sizes):
        sx, sy = in_w / w, in_h / h
        small = _area_at_input(ann["boxes"], sx, sy, offset) < max_area
        difficult = np.asarray(ann.get("difficult", np.zeros(len(small), bool)), bool).reshape(-1)
        num_small += int((small & ~difficult).sum())
        anns.append({**ann, "difficult": torch.from_numpy(difficult | ~small)})
        dets.append({**det, "ignore": torch.from_numpy(_area_at_input(det["boxes"], sx, sy, 0.0) >= max_area)})
    if num_small == 0:
        return None
    result = voc_eval(dets, anns, iou_threshold=0.5, use_07_metric=use_07_metric, pixel_inclusive=pixel_inclusive)
    result["num_small"] = num_small
    return result
