"""Clip boxes to the image and drop degenerate ones, so nothing invalid reaches the loss."""
from __future__ import annotations

import warnings

import numpy as np

# An annotated image side outside 1..MAX_SIDE (0x0, negative, NaN, absurd) is not used: the
# image file's own size is trusted instead.
MAX_SIDE = 2 ** 31 - 1


def usable_side(value: float) -> bool:
    """Whether an annotated width or height can be trusted (NaN compares False, so it cannot)."""
    return 1 <= value <= MAX_SIDE


def clip_and_filter(boxes: np.ndarray, width: float, height: float) -> tuple[np.ndarray, np.ndarray]:
    """Clip pixel (x1, y1, x2, y2) boxes to [0, width] x [0, height].

    Returns (clipped float32 boxes, keep mask). A box is kept when its coordinates are finite
    (before clipping, and after the cast to float32) and it has x2 > x1 and y2 > y1 after
    clipping. Works in float64 first, so a huge coordinate is clipped rather than overflowing.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        clipped = boxes.copy()
        clipped[:, 0::2] = np.clip(clipped[:, 0::2], 0.0, width)
        clipped[:, 1::2] = np.clip(clipped[:, 1::2], 0.0, height)
        clipped = clipped.astype(np.float32)
        keep = (np.isfinite(boxes).all(axis=1) & np.isfinite(clipped).all(axis=1)
                & (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1]))
    return clipped, keep


def warn_dropped(num_dropped: int, num_total: int, where: str) -> None:
    """One warning per data set that counts the degenerate boxes it dropped."""
    if num_dropped:
        warnings.warn(f"{where}: dropped {num_dropped} degenerate box(es) of {num_total} "
                      "(zero or negative width/height after clipping to the image, or not finite)",
                      stacklevel=3)
