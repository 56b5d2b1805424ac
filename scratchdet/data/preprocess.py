"""The one path from images to the network's input, and from detections back to pixels.

``preprocess`` (images -> normalised batch) and ``postprocess`` (``detect`` output -> per-image
pixel boxes) are what evaluation, ``SSD.predict``, ``FastPredictor.predict`` and
``scratchdet detect`` all call; the evaluation transform (``SSDTransform(train=False)``) runs
:func:`resize_and_normalise` on each image, so it produces the same pixels. The training
augmentation resamples with the same filter and normalises with :func:`normalise`.

Pixels are 8-bit RGB: every input is brought to a PIL RGB image first (a float tensor in
[0, 1] is quantised to 8 bits, as a JPEG would be), resized to ``image_size`` x
``image_size`` with PIL's ``resize`` filter, then scaled to [0, 1] and normalised with the
model's ``mean`` and ``std``. The resize filter and the mean/std are part of ``model.config``,
so a saved model carries them.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..constants import MEAN, STD

__all__ = ["RESIZE_FILTERS", "as_hw", "check_input_spec", "to_pil_rgb", "normalise", "resize_and_normalise",
           "preprocess", "postprocess"]

# resize name (model.config["resize"]) -> PIL filter. PIL's filters widen their support when
# downsampling, so "bilinear" is antialiased.
RESIZE_FILTERS = {
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "nearest": Image.NEAREST,
    "box": Image.BOX,
}


def as_hw(size) -> tuple[int, int]:
    """An input size, one side or (height, width) -> (height, width)."""
    if isinstance(size, (list, tuple)):
        if len(size) != 2:
            raise ValueError(f"expected a size as one int or (height, width), got {tuple(size)}")
        return int(size[0]), int(size[1])
    return int(size), int(size)


def check_input_spec(image_size, mean=MEAN, std=STD, resize="bilinear") -> None:
    """Raise ``ValueError`` for an input spec no image can be preprocessed with."""
    if min(as_hw(image_size)) < 1:
        raise ValueError(f"image_size must be positive (one side or (height, width)), got {image_size}")
    if resize not in RESIZE_FILTERS:
        raise ValueError(f"resize must be one of {sorted(RESIZE_FILTERS)}, got {resize!r}")
    for name, values in (("mean", mean), ("std", std)):
        if len(values) != 3 or not all(np.isfinite(float(v)) for v in values):
            raise ValueError(f"{name} must be three finite numbers (R, G, B), got {tuple(values)}")
    if not all(float(s) > 0 for s in std):
        raise ValueError(f"std must be positive, got {tuple(std)}")


def to_pil_rgb(image) -> Image.Image:
    """A PIL image, a uint8 ``[H, W]`` / ``[H, W, C]`` array, or a ``[C, H, W]`` tensor (uint8 0..255,
    or float 0..1) with C in (1, 3, 4) -> a PIL RGB image (alpha dropped, grey repeated)."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] not in (1, 3, 4):
            raise ValueError(f"expected an image tensor of shape [C, H, W] with C in (1, 3, 4), "
                             f"got {list(image.shape)}")
        t = image.detach().cpu()
        if t.is_floating_point():
            if t.numel() and not (torch.isfinite(t).all() and t.min() >= 0 and t.max() <= 1):
                raise ValueError("expected a float image tensor with values in [0, 1] (not normalised: "
                                 "preprocessing normalises with the model's mean and std)")
            t = (t * 255).round().to(torch.uint8)
        elif t.dtype != torch.uint8:
            raise TypeError(f"expected a uint8 or float image tensor, got {t.dtype}")
        array = t.permute(1, 2, 0).numpy()
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"expected a uint8 image array, got {image.dtype}")
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise ValueError(f"expected an image array of shape [H, W] or [H, W, C] with C in (1, 3, 4), "
                             f"got {list(image.shape)}")
        array = image
    else:
        raise TypeError(f"expected a PIL image, a uint8 array or a [C, H, W] tensor, got {type(image).__name__}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    if array.size == 0:
        raise ValueError(f"expected a non-empty image, got shape {list(array.shape)}")
    return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")


def normalise(patch: Image.Image, mean=MEAN, std=STD, affine=None) -> np.ndarray:
    """RGB PIL image -> float32 ``[3, h, w]``: ``(x / 255 - mean) / std``, after an optional
    colour map ``x -> clip(M x + b, 0, 255)`` (``affine = (M, b)``, the photometric distortion).

    The 3x3 product is written as nine scaled adds on channel planes rather than a matmul:
    numpy hands small matmuls to a multi-threaded BLAS, which oversubscribes the CPU when
    DataLoader workers already use every core.
    """
    pw, ph = patch.size
    x = np.asarray(patch, dtype=np.float32).transpose(2, 0, 1).reshape(3, -1)
    if affine is None:
        out = x.copy()
    else:
        m, b = (np.asarray(a, np.float32) for a in affine)
        out = np.empty_like(x)
        for c in range(3):
            o = out[c]
            np.multiply(x[0], m[c, 0], out=o)
            o += m[c, 1] * x[1]
            o += m[c, 2] * x[2]
            o += b[c]
        np.clip(out, 0.0, 255.0, out=out)
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    out *= (1.0 / (255.0 * std))[:, None]
    out -= (mean / std)[:, None]
    return out.reshape(3, ph, pw)


def resize_and_normalise(image, image_size, mean=MEAN, std=STD, resize: str = "bilinear") -> torch.Tensor:
    """One image -> the network's float32 ``[3, H, W]`` input (``image_size``: one side or (H, W))."""
    pil = to_pil_rgb(image)
    h, w = as_hw(image_size)
    return torch.from_numpy(normalise(pil.resize((w, h), RESIZE_FILTERS[resize]), mean, std))


def preprocess(images, image_size, mean=MEAN, std=STD, resize: str = "bilinear"):
    """Images of any size -> ``(batch [B, 3, H, W] float32, sizes [(w, h), ...])``.

    ``images``: one image or a list of them, each a PIL image, a uint8 array or a ``[C, H, W]``
    tensor (see :func:`to_pil_rgb`). ``sizes`` are the original widths and heights, which
    :func:`postprocess` needs to map detections back to each image's pixels.
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
