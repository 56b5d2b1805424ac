"""The SSD augmentation pipeline, seeded and fast.

Training: photometric distortion, expand (zoom out up to 4x, p 0.5), min-IoU
random crop, horizontal flip, resize to ``size``, normalise. Evaluation: resize
and normalise.

Why it is fast: the expanded canvas is never materialised. Expand, crop and flip
are composed into one rectangle of the source image and one rectangle of the
output, and PIL resamples that source rectangle straight into place (the rest of
the output is the mean colour, 0 after normalisation). The photometric
distortion (brightness, contrast, saturation, hue, channel swap) is linear in
RGB, with hue and saturation applied in YIQ space, so it is folded into one 3x3
affine map that runs, together with normalisation, on the output pixels only.
Per-pixel work is one 3x3 colour map over at most S*S pixels.

Reproducibility: with ``seed`` set, sample ``index`` in epoch ``e`` draws from
``numpy.random.default_rng((seed, e, index))``, so the result does not depend on
worker count or order. Either call ``set_epoch`` (or ``dataset.set_epoch``) each
epoch (with DataLoader workers, ``persistent_workers=False`` then, so the workers see
it), or index the data set with ``(epoch, index)`` pairs, which carry the epoch to
every worker (``ResumableBatchSampler(..., with_epoch=True)``, the trainer's way).
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..constants import MEAN, STD
from ..structures.errors import ConfigError
from ..structures.image import RESIZE_FILTERS, as_hw, check_input_spec, normalise, resize_and_normalise, to_pil_rgb

# RGB <-> YIQ: luma plus two chroma axes; scaling the chroma is saturation, rotating it is hue.
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114],
                        [0.596, -0.274, -0.322],
                        [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


def _pixel_affine(rng, brightness=32.0, contrast=(0.5, 1.5), saturation=(0.5, 1.5), hue=18.0,
                  channel_swap=True):
    """The SSD photometric distortion as (M, b): x -> M @ x + b on 0..255 RGB."""
    m, b = np.eye(3), np.zeros(3)

    def apply(a, c=0.0):
        nonlocal m, b
        m, b = a @ m, a @ b + c

    if rng.random() < 0.5:
        apply(np.eye(3), rng.uniform(-brightness, brightness))
    contrast_first = rng.random() < 0.5
    alpha = rng.uniform(*contrast) if rng.random() < 0.5 else 1.0
    if contrast_first:
        apply(alpha * np.eye(3))
    sat = rng.uniform(*saturation) if rng.random() < 0.5 else 1.0
    theta = np.deg2rad(rng.uniform(-hue, hue)) if rng.random() < 0.5 else 0.0
    if sat != 1.0 or theta != 0.0:
        c, s = np.cos(theta), np.sin(theta)
        chroma = np.array([[1, 0, 0], [0, sat * c, -sat * s], [0, sat * s, sat * c]])
        apply(_YIQ_TO_RGB @ chroma @ _RGB_TO_YIQ)
    if not contrast_first:
        apply(alpha * np.eye(3))
    if channel_swap and rng.random() < 0.5:
        apply(np.eye(3)[rng.permutation(3)])
    return m, b


def tile_crop(size, boxes, tile, rng, object_prob=0.8, min_visible=0.5):
    """A native-resolution ``tile`` x ``tile`` window of an image of ``size`` (w, h) for training on
    tiles (YOLT): ``(window (x1, y1, x2, y2) in whole pixels, boxes in the window's pixels, keep)``.

    With probability ``object_prob`` (and when there are boxes) the window is placed to contain a
    randomly chosen box (whole when it fits), else anywhere; an image side shorter than ``tile`` is
    taken whole. Boxes are clipped to the window; those with less than ``min_visible`` of their area
    inside it are dropped (``keep`` False), not marked ignore: the loss has no ignore label, and a
    sliver of an object is closer to background than to the object.
    """
    w, h = int(size[0]), int(size[1])
    tw, th = min(int(tile), w), min(int(tile), h)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    target = boxes[rng.integers(len(boxes))] if len(boxes) and rng.random() < object_prob else None

    def start(length, side, lo_edge, hi_edge):
        if side >= length:
            return 0
        if target is None:
            return int(rng.integers(0, length - side + 1))
        lo, hi = max(0.0, hi_edge - side), min(float(length - side), lo_edge)   # windows holding the box whole
        if lo > hi:                                                            # larger than a window: its centre
            lo = hi = min(max((lo_edge + hi_edge - side) / 2, 0.0), length - side)
        return int(np.clip(np.round(rng.uniform(lo, hi)), 0, length - side))

    x1 = start(w, tw, *(target[[0, 2]] if target is not None else (0, 0)))
    y1 = start(h, th, *(target[[1, 3]] if target is not None else (0, 0)))
    window = (x1, y1, x1 + tw, y1 + th)
    clipped = np.empty_like(boxes)
    clipped[:, 0::2] = np.clip(boxes[:, 0::2], x1, x1 + tw) - x1
    clipped[:, 1::2] = np.clip(boxes[:, 1::2], y1, y1 + th) - y1
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    visible = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    keep = (visible > 0) & (visible >= min_visible * area)
    return window, clipped[keep], keep


def _iou_many_to_many(a, b):
    """IoU [N, M] of continuous (x1, y1, x2, y2) boxes."""
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


class SSDTransform:
    """SSD data augmentation (``train=True``) or test-time resize (``train=False``).

    Called as ``transform(image, target, index=None)`` with a PIL image and a
    target holding pixel ``boxes`` [M,4], ``labels`` [M], ``difficult`` [M] and
    ``image_id``. Returns (image tensor [3, H, W] normalised with ``mean`` and
    ``std``, target) where the target's boxes are normalised (x1, y1, x2, y2) in
    [0, 1], every one with x2 > x1 and y2 > y1, and ``orig_size`` is the input
    (height, width). The evaluation pixels are exactly those of the model's
    ``preprocess`` (both call :func:`scratchdet.structures.image.resize_and_normalise`);
    :meth:`from_config` takes the
    size, mean, std and resize filter from a model's config.

    Args:
        size: output side in pixels, or (height, width).
        train: augment (True) or only resize (False).
        seed: None draws fresh randomness every call; an int makes every
            (epoch, index) sample reproducible.
        drop_difficult: remove ``difficult`` boxes before augmenting (training only).
        expand_prob, max_expand: zoom-out probability and largest ratio.
        min_ious: the crop modes besides "keep the whole image".
        min_crop: smallest crop side as a fraction of the (expanded) image.
        flip_prob: horizontal flip probability.
        photometric: apply the photometric distortion.
        mean, std: per-channel normalisation of [0, 1] RGB.
        resize: the resampling filter (``scratchdet.structures.image.RESIZE_FILTERS``).
        tile: training only, 0 (off) or a window side in px: first take a native-resolution
            window of that size (:func:`tile_crop`: biased to hold an object, boxes less than half
            visible dropped), then augment it as a whole image. For images much larger than the
            network (YOLT); evaluate such a model with tiled inference at the same size.
    """

    def __init__(self, size, train=True, seed=None, drop_difficult=False, expand_prob=0.5, max_expand=4.0,
                 min_ious=(0.1, 0.3, 0.5, 0.7, 0.9), min_crop=0.3, flip_prob=0.5, photometric=True,
                 mean=MEAN, std=STD, resize="bilinear", tile=0):
        try:
            check_input_spec(size, mean, std, resize)
        except ValueError as exc:
            raise ConfigError(f"SSDTransform: {exc}") from None
        if not (np.isfinite(max_expand) and max_expand >= 1.0):
            raise ConfigError(f"SSDTransform: max_expand must be >= 1, got {max_expand}")
        self.size = tuple(int(v) for v in size) if isinstance(size, (list, tuple)) else int(size)
        self.size_hw = as_hw(self.size)
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.drop_difficult = drop_difficult
        self.expand_prob, self.max_expand = expand_prob, max_expand
        self.crop_modes = (None, *min_ious)
        self.min_crop = min_crop
        self.flip_prob = flip_prob
        self.photometric = photometric
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.resize = resize
        if tile and not (float(tile) == int(tile) and int(tile) >= 32):
            raise ConfigError(f"SSDTransform: tile must be 0 (off) or a window side >= 32 px, got {tile}")
        self.tile = int(tile)
        self._calls = 0

    @classmethod
    def from_config(cls, config: dict, train: bool = False, **options) -> "SSDTransform":
        """The transform for a model with this ``model.config``: its input size, mean, std and resize filter."""
        spec = {k: config[k] for k in ("mean", "std", "resize") if k in config}
        return cls(config["image_size"], train=train, **spec, **options)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __repr__(self):
        return (f"SSDTransform(size={self.size}, train={self.train}, seed={self.seed}, "
                f"drop_difficult={self.drop_difficult})")

    # ------------------------------------------------------------------
    def _rng(self, index, epoch=None):
        if self.seed is None:
            return np.random.default_rng()
        if index is None:
            index, self._calls = self._calls, self._calls + 1
        return np.random.default_rng((int(self.seed), self.epoch if epoch is None else int(epoch), int(index)))

    def __call__(self, image, target, index=None, epoch=None):
        image = to_pil_rgb(image)
        w, h = image.size
        boxes = np.asarray(target["boxes"], np.float64).reshape(-1, 4)
        labels = np.asarray(target["labels"], np.int64).reshape(-1)
        difficult = np.asarray(target.get("difficult", np.zeros(len(labels), bool)), bool).reshape(-1)
        if self.train:
            rng = self._rng(index, epoch)
            if self.drop_difficult:
                keep = ~difficult
                boxes, labels, difficult = boxes[keep], labels[keep], difficult[keep]
            if self.tile:
                window, boxes, keep = tile_crop(image.size, boxes, self.tile, rng)
                image, labels, difficult = image.crop(window), labels[keep], difficult[keep]
            pixels, boxes, keep = self._augment(image, boxes, rng)
            labels, difficult = labels[keep], difficult[keep]
        else:
            pixels = resize_and_normalise(image, self.size, self.mean, self.std, self.resize)
            boxes = boxes / np.array([w, h, w, h], np.float64)
        boxes = np.clip(boxes, 0.0, 1.0).astype(np.float32)
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        out = {"boxes": torch.from_numpy(np.ascontiguousarray(boxes[valid])),
               "labels": torch.from_numpy(labels[valid]),
               "difficult": torch.from_numpy(difficult[valid]),
               "image_id": target.get("image_id"),
               "orig_size": (h, w)}
        return pixels, out

    def _augment(self, image, boxes, rng):
        w, h = image.size
        affine = _pixel_affine(rng) if self.photometric else None
        # Expand: the image sits at (left, top) on a (w*r, h*r) canvas of mean colour.
        left = top = 0.0
        cw, ch = float(w), float(h)
        if self.max_expand > 1.0 and rng.random() < self.expand_prob:
            r = rng.uniform(1.0, self.max_expand)
            cw, ch = w * r, h * r
            left, top = rng.uniform(0.0, cw - w), rng.uniform(0.0, ch - h)
            boxes = boxes + np.array([left, top, left, top])
        crop, keep = self._sample_crop(rng, cw, ch, boxes)
        boxes = boxes[keep]
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], crop[0], crop[2]) - crop[0]
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], crop[1], crop[3]) - crop[1]
        crop_w, crop_h = crop[2] - crop[0], crop[3] - crop[1]
        flip = rng.random() < self.flip_prob
        if flip:
            boxes = np.stack([crop_w - boxes[:, 2], boxes[:, 1], crop_w - boxes[:, 0], boxes[:, 3]], axis=1)
        boxes = boxes / np.array([crop_w, crop_h, crop_w, crop_h])

        # Render: the part of the image inside the crop, resampled into its output rectangle.
        out_h, out_w = self.size_hw
        sx, sy = out_w / crop_w, out_h / crop_h
        canvas = np.zeros((3, out_h, out_w), np.float32)  # the mean colour, normalised
        vx1, vy1 = max(left, crop[0]), max(top, crop[1])
        vx2, vy2 = min(left + w, crop[2]), min(top + h, crop[3])
        ox1, ox2 = round((vx1 - crop[0]) * sx), round((vx2 - crop[0]) * sx)
        oy1, oy2 = round((vy1 - crop[1]) * sy), round((vy2 - crop[1]) * sy)
        if ox2 > ox1 and oy2 > oy1:
            src = (min(max(ox1 / sx + crop[0] - left, 0.0), w), min(max(oy1 / sy + crop[1] - top, 0.0), h),
                   min(max(ox2 / sx + crop[0] - left, 0.0), w), min(max(oy2 / sy + crop[1] - top, 0.0), h))
            patch = image.resize((ox2 - ox1, oy2 - oy1), RESIZE_FILTERS[self.resize], box=src)
            if flip:
                patch = patch.transpose(Image.FLIP_LEFT_RIGHT)
                ox1, ox2 = out_w - ox2, out_w - ox1
            canvas[:, oy1:oy2, ox1:ox2] = normalise(patch, self.mean, self.std, affine)
        return torch.from_numpy(canvas), boxes, keep

    def _sample_crop(self, rng, w, h, boxes, trials=50, max_modes=16):
        """mmdet/SSD MinIoURandomCrop: returns (crop x1, y1, x2, y2) and which boxes it keeps.

        A mode is drawn from {keep, *min_ious}; up to ``trials`` crops (side
        min_crop..1 of the canvas, aspect 1/2..2) are drawn at once and the first
        whose IoU with every box is >= min_iou and that contains at least one box
        centre wins. Boxes whose centre lies outside the crop are dropped.
        """
        everything = np.ones(len(boxes), bool)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        for _ in range(max_modes):
            mode = self.crop_modes[rng.integers(len(self.crop_modes))]
            if mode is None:
                return (0.0, 0.0, w, h), everything
            cw = rng.uniform(self.min_crop * w, w, trials)
            ch = rng.uniform(self.min_crop * h, h, trials)
            x1 = rng.uniform(0.0, 1.0, trials) * (w - cw)
            y1 = rng.uniform(0.0, 1.0, trials) * (h - ch)
            crops = np.stack([x1, y1, x1 + cw, y1 + ch], axis=1)
            ok = (ch / cw >= 0.5) & (ch / cw <= 2.0)
            if len(boxes):
                ok &= _iou_many_to_many(crops, boxes).min(axis=1) >= mode
                inside = ((centres[None, :, 0] > crops[:, None, 0]) & (centres[None, :, 0] < crops[:, None, 2])
                          & (centres[None, :, 1] > crops[:, None, 1]) & (centres[None, :, 1] < crops[:, None, 3]))
                ok &= inside.any(axis=1)
            hits = np.flatnonzero(ok)
            if hits.size:  # the first valid trial, as the sequential loop would take
                t = hits[0]
                return tuple(crops[t]), (inside[t] if len(boxes) else everything)
        return (0.0, 0.0, w, h), everything
