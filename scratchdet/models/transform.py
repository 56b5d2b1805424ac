"""The model's transform: images of any size -> the network's input batch, and the fixed-size
``detect`` output -> detections in each image's own pixels (the role of torchvision's
``GeneralizedRCNNTransform``).

``SSD.preprocess`` / ``SSD.postprocess``, ``SSD.predict``, ``FastPredictor.predict``, evaluation
(through ``model.postprocess``) and ``scratchdet detect`` all go through these two functions. The
per-image pixels come from :func:`scratchdet.structures.image.resize_and_normalise`, which the
data pipeline's evaluation transform (``SSDTransform(train=False)``) calls too, so evaluation and
prediction see identical pixels.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..constants import MEAN, STD
from ..structures.image import resize_and_normalise, to_pil_rgb

__all__ = ["preprocess", "postprocess"]


def preprocess(images, image_size, mean=MEAN, std=STD, resize: str = "bilinear"):
    """Images of any size -> ``(batch [B, 3, H, W] float32, sizes [(w, h), ...])``.

    ``images``: one image or a list of them, each a PIL image, a uint8 array or a ``[C, H, W]``
    tensor (see :func:`scratchdet.structures.image.to_pil_rgb`). ``sizes`` are the original widths
    and heights, which :func:`postprocess` needs to map detections back to each image's pixels.
    """
    if not isinstance(images, (list, tuple)):
        images = [images]
    if not images:
        raise ValueError("preprocess: expected at least one image")
    pils = [to_pil_rgb(im) for im in images]
    batch = torch.stack([resize_and_normalise(p, image_size, mean, std, resize) for p in pils])
    return batch, [p.size for p in pils]


def postprocess(detections, sizes: Sequence[tuple[int, int]]) -> list[dict]:
    """The fixed-size ``detect`` output ``(boxes [B,K,4], scores [B,K], labels [B,K], num [B])`` with
    normalised boxes -> one dict per image with ``boxes [n, 4]`` in that image's pixels (x1, y1, x2, y2),
    ``scores [n]`` and ``labels [n]`` (1..C-1), best first; on the CPU, boxes and scores in float32."""
    boxes, scores, labels, num = (t.detach().cpu() for t in detections)
    if len(sizes) != boxes.shape[0]:
        raise ValueError(f"postprocess: {boxes.shape[0]} images of detections but {len(sizes)} sizes")
    results = []
    for i, (w, h) in enumerate(sizes):
        n = int(num[i])
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        results.append({"boxes": boxes[i, :n].float() * scale, "scores": scores[i, :n].float(),
                        "labels": labels[i, :n]})
    return results
