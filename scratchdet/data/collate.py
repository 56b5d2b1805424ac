"""Batch transformed samples into the padded [B, G] layout that match_priors takes."""
from __future__ import annotations

import torch

from ..constants import PAD_LABEL


def collate_detection(batch):
    """``[(image [3,S,S], target), ...]`` -> (images, targets, metas).

    images: [B, 3, S, S] float. targets: {"boxes": [B, G, 4] normalised,
    "labels": [B, G] int64 with 0 = padding, "difficult": [B, G] bool}, where
    G = max(1, most objects in one image); padded rows are zero boxes with label 0.
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
    b = len(batch)
    g = max(1, max(len(t["labels"]) for t in targets))
    boxes = torch.zeros(b, g, 4, dtype=torch.float32)
    labels = torch.full((b, g), PAD_LABEL, dtype=torch.int64)
    difficult = torch.zeros(b, g, dtype=torch.bool)
    for i, t in enumerate(targets):
        n = len(t["labels"])
        if n:
            boxes[i, :n] = t["boxes"]
            labels[i, :n] = t["labels"]
            difficult[i, :n] = t["difficult"]
    metas = [{"image_id": t.get("image_id"), "orig_size": t.get("orig_size")} for t in targets]
    return torch.stack(images), {"boxes": boxes, "labels": labels, "difficult": difficult}, metas
