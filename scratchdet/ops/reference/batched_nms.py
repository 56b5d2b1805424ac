"""batched_nms: per-class NMS, torchvision.ops.batched_nms with its CPU semantics on every device."""
from __future__ import annotations

import math

import torch

from .._checks import ANY_SIZE, check_same_device, check_same_dtype, check_shape
from .nms import nms

__all__ = ["TORCHVISION_VANILLA_NUMEL", "check_batched_nms_args", "batched_nms"]


# torchvision.ops.batched_nms runs one NMS over class-offset boxes up to this
# many box coordinates (boxes.numel()) and a per-class loop above it; the
# offsets round the coordinates, so the spec follows the same switch.
TORCHVISION_VANILLA_NUMEL = {"cpu": 4000, "cuda": 100_000}


# The dtypes C++'s isIntegralType(t, includeBool=false) accepts.
_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32,
                   torch.uint64)


def check_batched_nms_args(boxes, scores, idxs, iou_threshold) -> None:
    op = "batched_nms"
    check_shape(boxes, 2, 4, op, "boxes", "[N, 4]")
    check_shape(scores, 1, ANY_SIZE, op, "scores", "[N]")
    check_shape(idxs, 1, ANY_SIZE, op, "idxs", "[N]")
    if boxes.dtype not in (torch.float16, torch.float32, torch.float64):
        raise RuntimeError(f"{op}: expected boxes to be float16, float32 or float64, got {boxes.dtype}")
    check_same_dtype(boxes, scores, op, "boxes", "scores")
    if idxs.dtype not in _INTEGER_DTYPES:
        raise RuntimeError(f"{op}: expected idxs to be an integer tensor, got {idxs.dtype}")
    if not (scores.shape[0] == idxs.shape[0] == boxes.shape[0]):
        raise RuntimeError(f"{op}: expected boxes [N, 4], scores [N] and idxs [N] to agree on N, got "
                           f"{list(boxes.shape)}, {list(scores.shape)} and {list(idxs.shape)}")
    check_same_device(boxes, scores, op, "boxes", "scores")
    check_same_device(boxes, idxs, op, "boxes", "idxs")
    if math.isnan(float(iou_threshold)):
        raise RuntimeError(f"{op}: expected a number as iou_threshold, got NaN")


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Per-class greedy NMS: torchvision.ops.batched_nms with torchvision's CPU semantics on every device.

    Boxes of different ``idxs`` never suppress each other; a box is removed when its IoU with a
    kept, higher-scoring box of its class is > ``iou_threshold``. Returns the kept indices (int64)
    by decreasing score. As torchvision: one NMS over class-offset boxes up to 4000 box
    coordinates (numel) on CPU and 100 000 on CUDA, one NMS per class above (the offsets round the
    coordinates, so the switch is part of the answer). Each NMS is :func:`nms`: stable score order
    (equal scores by increasing index), torchvision's CPU IoU in the boxes' dtype (fp16 rounds
    every step) and ``float64(iou) > iou_threshold`` -- also on CUDA, where torchvision itself
    differs (IoU in float for fp16, compared with ``(float)iou_threshold``, unstable sort up to 32
    boxes). Above the switch the kept indices are ordered as torchvision orders them, by an
    unstable ``torch.sort`` of their scores on the input's device, so equal scores there come in
    that device's sort order.
    """
    check_batched_nms_args(boxes, scores, idxs, iou_threshold)
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    if boxes.numel() <= TORCHVISION_VANILLA_NUMEL.get(boxes.device.type, 100_000):
        offsets = idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
        return nms(boxes + offsets[:, None], scores, iou_threshold)
    keep_mask = torch.zeros_like(scores, dtype=torch.bool)
    for c in torch.unique(idxs):
        members = torch.where(idxs == c)[0]
        keep_mask[members[nms(boxes[members], scores[members], iou_threshold)]] = True
    kept = torch.where(keep_mask)[0]
    # Not stable, as in torchvision: equal scores come in torch.sort's order on this device.
    return kept[torch.sort(scores[kept], descending=True).indices]
