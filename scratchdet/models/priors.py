"""SSD prior (default box) generator: the paper's VOC and COCO size presets, and SSD's scale rule
for any feature pyramid and any (also non-square) input size.

Priors are (cx, cy, w, h), normalised to [0, 1] of the input. Their order matches the head
outputs: source by source, then row-major over the feature map, then the boxes of one
location: the min-size square, the sqrt(min*max) square, then for each aspect ratio r the
pair (w*sqrt(r), h/sqrt(r)), (w/sqrt(r), h*sqrt(r)). Sizes are in input pixels and the boxes
are square in pixels (on a non-square input their normalised w and h differ).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ..structures.errors import ConfigError
from ..structures.image import as_hw

__all__ = ["PRIOR_SIZES", "SSD300_FEATURE_SIZES", "SSD300_STEPS", "SSD300_ASPECT_RATIOS", "as_hw",
           "num_priors_per_location", "default_aspect_ratios", "prior_sizes", "ssd_prior_sizes", "default_steps",
           "generate_priors", "prior_shapes", "tile_priors", "source_prior_shapes"]

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


def default_aspect_ratios(num_sources: int) -> tuple:
    """SSD300's pattern for any number of sources: [2] on the first and the last two, [2, 3] between."""
    ars = [(2, 3)] * num_sources
    for i in {0, num_sources - 1, max(num_sources - 2, 0)}:
        if num_sources:
            ars[i] = (2,)
    return tuple(ars)


def prior_sizes(preset: str, image_size, num_sources: int = 6):
    """Min and max sizes in pixels for an input of ``image_size``: the 300-px preset scaled by
    (shorter side) / 300.

    With fewer than six sources the smallest sizes are dropped (the large-object
    end of the range stays, so the biggest prior still covers the image).
    """
    if preset not in PRIOR_SIZES:
        raise ValueError(f"unknown prior size preset {preset!r}; expected one of {sorted(PRIOR_SIZES)} or 'ssd'")
    if not 1 <= num_sources <= 6:
        raise ValueError(f"prior_sizes {preset!r} covers 1..6 sources, got {num_sources}; use prior_sizes='ssd' "
                         "(the SSD scale rule) for other pyramids")
    scale = min(as_hw(image_size)) / 300.0
    mins, maxs = PRIOR_SIZES[preset]
    mins, maxs = mins[6 - num_sources:], maxs[6 - num_sources:]
    return [m * scale for m in mins], [m * scale for m in maxs]


def ssd_prior_sizes(num_sources: int, image_size, s_min: float = 0.2, s_max: float = 0.9):
    """SSD's scale rule: source k of m has scale ``s_k = s_min + (s_max - s_min)(k - 1)/(m - 1)`` of
    the input's shorter side, and its extra square prior ``sqrt(s_k s_{k+1})`` (``s_{m+1} = 1``).
    Returns (min sizes, max sizes) in pixels, as :func:`prior_sizes`."""
    if num_sources < 1:
        raise ValueError(f"ssd_prior_sizes: expected at least one source, got {num_sources}")
    if not 0.0 < s_min <= s_max <= 1.0:
        raise ValueError(f"expected 0 < s_min <= s_max <= 1, got s_min={s_min}, s_max={s_max}")
    side = min(as_hw(image_size))
    m = num_sources
    scales = [s_min + (s_max - s_min) * k / (m - 1) for k in range(m)] if m > 1 else [s_min]
    scales.append(1.0)
    return [s * side for s in scales[:-1]], [s * side for s in scales[1:]]


def default_steps(image_size, feature_sizes) -> list[tuple[float, float]]:
    """The paper's steps at 300 px with the standard layout, else the source strides
    (input size / feature size, per axis), as (step_y, step_x)."""
    h, w = as_hw(image_size)
    sizes = [as_hw(f) for f in feature_sizes]
    if (h, w) == (300, 300) and sizes == [(f, f) for f in SSD300_FEATURE_SIZES]:
        return [(float(s), float(s)) for s in SSD300_STEPS]
    return [(h / fh, w / fw) for fh, fw in sizes]


def prior_shapes(image_size, min_sizes: Sequence[float], max_sizes: Sequence[float],
                 aspect_ratios: Sequence[Sequence[float]]) -> list[list[tuple[float, float]]]:
    """Per source, the normalised (w, h) of the priors of one location, in the order the module
    docstring gives: SSD's rule from the min/max sizes (pixels) and the aspect ratios."""
    h, w = as_hw(image_size)
    shapes = []
    for s_min, s_max, ars in zip(min_sizes, max_sizes, aspect_ratios):
        sx, sy = s_min / w, s_min / h                                             # normalised, per axis
        whs = [(sx, sy), (math.sqrt(sx * s_max / w), math.sqrt(sy * s_max / h))]
        for r in ars:
            whs += [(sx * math.sqrt(r), sy / math.sqrt(r)), (sx / math.sqrt(r), sy * math.sqrt(r))]
        shapes.append(whs)
    return shapes


def tile_priors(image_size, feature_sizes, shapes: Sequence[Sequence[tuple[float, float]]], steps=None,
                clip: bool = False, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[P, 4]`` (cx, cy, w, h): every source's ``shapes`` (normalised (w, h), one location's
    priors) at every location of its feature map, row-major; ``steps`` as :func:`generate_priors`."""
    if len(shapes) != len(feature_sizes):
        raise ValueError(f"tile_priors: {len(shapes)} prior layouts for {len(feature_sizes)} sources")
    h, w = as_hw(image_size)
    if steps is None:
        steps = default_steps(image_size, feature_sizes)
    out = []
    for f, step, whs in zip(feature_sizes, steps, shapes):
        fh, fw = as_hw(f)
        step_y, step_x = step if isinstance(step, (list, tuple)) else (step, step)
        cy = (torch.arange(fh, dtype=torch.float64) + 0.5) * (step_y / h)
        cx = (torch.arange(fw, dtype=torch.float64) + 0.5) * (step_x / w)
        cy, cx = torch.meshgrid(cy, cx, indexing="ij")                           # row-major locations
        cxcy = torch.stack([cx.reshape(-1), cy.reshape(-1)], -1)                  # [fh*fw, 2]
        wh = torch.tensor([tuple(map(float, s)) for s in whs], dtype=torch.float64)   # [A, 2]
        boxes = torch.cat([cxcy[:, None, :].expand(-1, len(whs), 2), wh[None].expand(fh * fw, -1, 2)], -1)
        out.append(boxes.reshape(-1, 4))
    priors = torch.cat(out) if out else torch.zeros((0, 4), dtype=torch.float64)
    if clip:
        priors = priors.clamp(0.0, 1.0)
    return priors.to(dtype)


def generate_priors(image_size, feature_sizes, min_sizes: Sequence[float], max_sizes: Sequence[float],
                    aspect_ratios: Sequence[Sequence[float]], steps=None, clip: bool = False,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """All priors, ``[P, 4]`` (cx, cy, w, h) normalised; ``clip`` clamps them to [0, 1].

    ``image_size`` and each feature size are an int side or (h, w); ``steps`` (default
    :func:`default_steps`) one number or (step_y, step_x) per source.
    """
    n = len(feature_sizes)
    if not (len(min_sizes) == len(max_sizes) == len(aspect_ratios) == n):
        raise ValueError(f"generate_priors: feature_sizes, min_sizes, max_sizes and aspect_ratios must have "
                         f"one entry per source; got {len(feature_sizes)}, {len(min_sizes)}, "
                         f"{len(max_sizes)} and {len(aspect_ratios)}")
    return tile_priors(image_size, feature_sizes, prior_shapes(image_size, min_sizes, max_sizes, aspect_ratios),
                       steps, clip, dtype)


def source_prior_shapes(config, num_sources: int) -> list[list[tuple[float, float]]]:
    """Per source, one location's prior shapes (normalised (w, h)) for an SSDConfig: its fitted
    ``prior_shapes`` when set (``priors=auto``), else SSD's rule from ``prior_sizes`` (or
    ``s_min``/``s_max``) and ``aspect_ratios``."""
    if config.prior_shapes is not None:
        if len(config.prior_shapes) != num_sources:
            raise ConfigError(f"prior_shapes has {len(config.prior_shapes)} entries for {num_sources} sources")
        return [list(zip(flat[0::2], flat[1::2])) for flat in config.prior_shapes]
    aspect_ratios = config.aspect_ratios or default_aspect_ratios(num_sources)
    if len(aspect_ratios) != num_sources:
        raise ConfigError(f"aspect_ratios has {len(aspect_ratios)} entries for {num_sources} sources")
    if config.prior_sizes == "ssd":
        min_sizes, max_sizes = ssd_prior_sizes(num_sources, config.image_size, config.s_min, config.s_max)
    else:
        min_sizes, max_sizes = prior_sizes(config.prior_sizes, config.image_size, num_sources)
    return prior_shapes(config.image_size, min_sizes, max_sizes, aspect_ratios)
