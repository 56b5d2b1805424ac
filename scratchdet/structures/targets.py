"""Targets in the padded [B, G] layout that match_priors takes: padded once, checked once, on the host;
and :func:`collate_detection`, the batch collation the training and evaluation loaders share."""
from __future__ import annotations

import torch

from ..constants import PAD_LABEL
from .errors import DataError

__all__ = ["collate_detection", "pad_targets", "as_padded_targets", "check_target_labels"]


def pad_targets(targets) -> dict[str, torch.Tensor]:
    """Per-image targets ``[{"boxes" [M,4], "labels" [M], "difficult" [M]?}, ...]`` -> padded
    ``{"boxes" [B,G,4] float32, "labels" [B,G] int64, "difficult" [B,G] bool}`` on the CPU, with
    G = max(1, most objects in one image); padded rows are zero boxes with label 0."""
    b = len(targets)
    counts = []
    for i, t in enumerate(targets):
        if not isinstance(t, dict) or "boxes" not in t or "labels" not in t:
            raise TypeError(f"targets[{i}]: expected a dict with 'boxes' [M, 4] and 'labels' [M]")
        counts.append(len(t["labels"]))
    g = max([1, *counts])
    boxes = torch.zeros(b, g, 4, dtype=torch.float32)
    labels = torch.full((b, g), PAD_LABEL, dtype=torch.int64)
    difficult = torch.zeros(b, g, dtype=torch.bool)
    for i, (t, n) in enumerate(zip(targets, counts)):
        if not n:
            continue
        box = torch.as_tensor(t["boxes"], dtype=torch.float32).detach().cpu()
        if box.numel() != 4 * n:
            raise DataError(f"targets[{i}]: {n} labels but boxes of shape {list(box.shape)} (expected [{n}, 4])")
        boxes[i, :n] = box.reshape(n, 4)
        labels[i, :n] = torch.as_tensor(t["labels"]).detach().cpu().to(torch.int64).reshape(n)
        if "difficult" in t:
            difficult[i, :n] = torch.as_tensor(t["difficult"]).detach().cpu().to(torch.bool).reshape(n)
    return {"boxes": boxes, "labels": labels, "difficult": difficult}


def as_padded_targets(targets) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch dict ``{"boxes" [B,G,4], "labels" [B,G]}`` or a list of per-image dicts ->
    ``(boxes [B,G,4], labels [B,G])`` tensors, on whatever device they were given."""
    if isinstance(targets, dict):
        boxes, labels = torch.as_tensor(targets["boxes"]), torch.as_tensor(targets["labels"])
    elif isinstance(targets, (list, tuple)):
        padded = pad_targets(targets)
        boxes, labels = padded["boxes"], padded["labels"]
    else:
        raise TypeError(f"targets must be a dict of padded tensors or a list of per-image dicts, "
                        f"got {type(targets).__name__}")
    if boxes.dim() != 3 or boxes.shape[-1] != 4 or tuple(labels.shape) != tuple(boxes.shape[:2]):
        raise DataError(f"targets: expected boxes [B, G, 4] and labels [B, G], got {list(boxes.shape)} "
                        f"and {list(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"targets: expected integer labels, got {labels.dtype}")
    return boxes, labels


def check_target_labels(labels: torch.Tensor, num_classes: int) -> None:
    """Labels must be < ``num_classes`` (0 and negative values are padding). Checked on the host,
    before the device copy: on CUDA an out-of-range label would be a device-side assert."""
    if not labels.numel() or torch.compiler.is_compiling():
        return
    bad = labels >= num_classes
    if bool(bad.any()):
        image, box = (int(i) for i in bad.nonzero()[0])
        raise DataError(f"targets: label {int(labels[image, box])} of image {image}, box {box} is out of range "
                        f"for a model with {num_classes} classes (1..{num_classes - 1}; 0 = background/padding)")


def collate_detection(batch):
    """``[(image [3,S,S], target), ...]`` -> (images, targets, metas).

    images: [B, 3, S, S] float. targets: :func:`pad_targets` of the per-image targets.
    metas: one dict per image with ``image_id`` and ``orig_size`` (h, w).
    """
    if not batch:
        raise ValueError("collate_detection: empty batch")
    images, targets = zip(*batch)
    if not all(isinstance(im, torch.Tensor) for im in images):
        raise TypeError("collate_detection: images must be tensors; give the data set a transform "
                        "(e.g. scratchdet.data.SSDTransform)")
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) != 1:
        raise ValueError(f"collate_detection: images differ in shape: {sorted(shapes)}")
    metas = [{"image_id": t.get("image_id"), "orig_size": t.get("orig_size")} for t in targets]
    return torch.stack(images), pad_targets(targets), metas
