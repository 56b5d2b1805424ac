"""SSD prior (default box) generator with the paper's VOC and COCO size presets.

Priors are (cx, cy, w, h), normalised to [0, 1]. Their order matches the head
outputs: source by source, then row-major over the feature map, then the boxes
of one location: the min-size square, the sqrt(min*max) square, then for each
aspect ratio r the pair (w*sqrt(r), h/sqrt(r)), (w/sqrt(r), h*sqrt(r)).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["PRIOR_SIZES", "SSD300_FEATURE_SIZES", "SSD300_STEPS", "SSD300_ASPECT_RATIOS",
           "num_priors_per_location", "prior_sizes", "default_steps", "generate_priors"]

# min/max sizes in pixels at 300 px input (docs/DESIGN.md, "Priors")
PRIOR_SIZES = {
    "voc": ((30, 60, 111, 162, 213, 264), (60, 111, 162, 213, 264, 315)),
    "coco": ((21, 45, 99, 153, 207, 261), (45, 99, 153, 207, 261, 315)),
}
SSD300_FEATURE_SIZES = (38, 19, 10, 5, 3, 1)
SSD300_STEPS = (8, 16, 32, 64, 100, 300)
SSD300_ASPECT_RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))


def num_priors_per_location(aspect_ratios: Sequence[Sequence[float]]) -> list[int]:
    """Two squares plus two boxes per aspect ratio: 4 for [2], 6 for [2, 3]."""
    return [2 + 2 * len(ars) for ars in aspect_ratios]


def prior_sizes(preset: str, image_size: int, num_sources: int = 6):
    """Min and max sizes in pixels for ``image_size``: the 300-px preset scaled by image_size / 300.

    With fewer than six sources the smallest sizes are dropped (the large-object
    end of the range stays, so the biggest prior still covers the image).
    """
    if preset not in PRIOR_SIZES:
        raise ValueError(f"unknown prior size preset {preset!r}; expected one of {sorted(PRIOR_SIZES)}")
    if not 1 <= num_sources <= 6:
        raise ValueError(f"prior_sizes: expected 1..6 sources, got {num_sources}")
    scale = image_size / 300.0
    mins, maxs = PRIOR_SIZES[preset]
    mins, maxs = mins[6 - num_sources:], maxs[6 - num_sources:]
    return [m * scale for m in mins], [m * scale for m in maxs]


def default_steps(image_size: int, feature_sizes: Sequence[int]) -> list[float]:
    """The paper's steps at 300 px with the standard layout, else image_size / feature size."""
    if image_size == 300 and tuple(feature_sizes) == SSD300_FEATURE_SIZES:
        return [float(s) for s in SSD300_STEPS]
    return [image_size / f for f in feature_sizes]


def generate_priors(image_size: int, feature_sizes: Sequence[int], min_sizes: Sequence[float],
                    max_sizes: Sequence[float], aspect_ratios: Sequence[Sequence[float]],
                    steps: Sequence[float] | None = None, clip: bool = False,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """All priors, ``[P, 4]`` (cx, cy, w, h) normalised; ``clip`` clamps them to [0, 1]."""
    n = len(feature_sizes)
    if not (len(min_sizes) == len(max_sizes) == len(aspect_ratios) == n):
        raise ValueError(f"generate_priors: feature_sizes, min_sizes, max_sizes and aspect_ratios must have "
                         f"one entry per source; got {len(feature_sizes)}, {len(min_sizes)}, "
                         f"{len(max_sizes)} and {len(aspect_ratios)}")
    if steps is None:
        steps = default_steps(image_size, feature_sizes)
    out = []
    for f, step, s_min, s_max, ars in zip(feature_sizes, steps, min_sizes, max_sizes, aspect_ratios):
        s = s_min / image_size
        s_prime = math.sqrt(s * s_max / image_size)
        whs = [(s, s), (s_prime, s_prime)]
        for r in ars:
            whs += [(s * math.sqrt(r), s / math.sqrt(r)), (s / math.sqrt(r), s * math.sqrt(r))]
        centres = (torch.arange(f, dtype=torch.float64) + 0.5) * (step / image_size)
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")                  # row-major locations
        cxcy = torch.stack([cx.reshape(-1), cy.reshape(-1)], -1)                  # [f*f, 2]
        wh = torch.tensor(whs, dtype=torch.float64)                               # [A, 2]
        boxes = torch.cat([cxcy[:, None, :].expand(-1, len(whs), 2), wh[None].expand(f * f, -1, 2)], -1)
        out.append(boxes.reshape(-1, 4))
    priors = torch.cat(out) if out else torch.zeros((0, 4), dtype=torch.float64)
    if clip:
        priors = priors.clamp(0.0, 1.0)
    return priors.to(dtype)
