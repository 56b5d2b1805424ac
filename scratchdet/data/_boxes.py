"""Clip boxes to the image and drop degenerate ones, so nothing invalid reaches the loss."""
from __future__ import annotations

import warnings

import numpy as np


def clip_and_filter(boxes: np.ndarray, width: float, height: float):
    """Clip pixel (x1, y1, x2, y2) boxes to [0, width] x [0, height].

    Returns (clipped boxes, keep mask). A box is kept when it is finite and has
    x2 > x1 and y2 > y1 after clipping.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    finite = np.isfinite(boxes).all(axis=1)
    clipped = boxes.copy()
    clipped[:, 0::2] = np.clip(clipped[:, 0::2], 0.0, width)
    clipped[:, 1::2] = np.clip(clipped[:, 1::2], 0.0, height)
    with np.errstate(invalid="ignore"):
        keep = finite & (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    return clipped, keep


def warn_dropped(num_dropped: int, num_total: int, where: str) -> None:
    """One warning per data set that counts the degenerate boxes it dropped."""
    if num_dropped:
        warnings.warn(f"{where}: dropped {num_dropped} degenerate box(es) of {num_total} "
                      "(zero or negative width/height after clipping to the image, or not finite)",
                      stacklevel=3)
