"""Images: the one file reader, conversion to 8-bit RGB, and the model's input spec.

Everything that turns pixels into the network's input lives here, so that the data pipeline
(``scratchdet.data``), the model's transform (``scratchdet.models.transform``) and the commands
see identical pixels:

- :func:`read_image` opens every image file the package reads (data sets, ``scratchdet detect``,
  the demo); :func:`to_rgb8` is its mode conversion, also applied to PIL images given to
  ``model.predict``. Both live in :mod:`scratchdet.structures.image_io` (numpy and Pillow only),
  which the torch-free ``scratchdet.runtime`` calls too, and are re-exported here.
- :func:`to_pil_rgb` brings any accepted in-memory image (PIL, uint8 array, ``[C, H, W]`` tensor)
  to a PIL RGB image; :func:`resize_and_normalise` turns one image into the network's
  ``[3, H, W]`` input; :func:`normalise` is the colour map + normalisation the training
  augmentation shares.
- :func:`check_input_spec` validates ``image_size``, ``mean``, ``std`` and ``resize``.

Pixels are 8-bit RGB: every input is brought to a PIL RGB image first (a float tensor in [0, 1]
is quantised to 8 bits, as a JPEG would be), resized to ``image_size`` with PIL's ``resize``
filter, scaled to [0, 1] and normalised with the model's ``mean`` and ``std``.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from PIL import Image

from ..constants import MEAN, STD
from .errors import ConfigError, DataError
from .image_io import RESIZE_FILTERS, array_to_rgb, read_image, read_image_size, resize_rgb, to_rgb8

__all__ = ["RESIZE_FILTERS", "as_hw", "check_input_spec", "read_image", "read_image_size", "to_rgb8", "to_pil_rgb",
           "normalise", "resize_and_normalise"]


def as_hw(size) -> tuple[int, int]:
    """An input size, one side or (height, width) -> (height, width)."""
    if isinstance(size, (list, tuple)):
        if len(size) != 2:
            raise ConfigError(f"expected a size as one int or (height, width), got {tuple(size)}")
        return int(size[0]), int(size[1])
    return int(size), int(size)


def check_input_spec(image_size, mean=MEAN, std=STD, resize="bilinear") -> None:
    """Raise :class:`ConfigError` (a ``ValueError``) naming the option for an input spec no image
    can be preprocessed with."""
    sides = image_size if isinstance(image_size, (list, tuple)) else [image_size]
    if not all(isinstance(s, numbers.Real) and not isinstance(s, bool) and math.isfinite(s) and s == int(s)
               for s in sides):
        raise ConfigError(f"image_size must be one whole number or (height, width), got {image_size!r}")
    if min(as_hw(image_size)) < 1:
        raise ConfigError(f"image_size must be positive (one side or (height, width)), got {image_size}")
    if resize not in RESIZE_FILTERS:
        raise ConfigError(f"resize must be one of {sorted(RESIZE_FILTERS)}, got {resize!r}")
    for name, values in (("mean", mean), ("std", std)):
        try:
            finite = len(values) == 3 and all(math.isfinite(float(v)) for v in values)
        except (TypeError, ValueError):
            finite = False
        if not finite:
            raise ConfigError(f"{name} must be three finite numbers (R, G, B), got {values!r}")
    if not all(float(s) > 0 for s in std):
        raise ConfigError(f"std must be positive, got {tuple(std)}")


# ------------------------------------------------------------------ in-memory images
def to_pil_rgb(image) -> Image.Image:
    """A PIL image (any mode, see :func:`to_rgb8`), a uint8 ``[H, W]`` / ``[H, W, C]`` array, or a
    ``[C, H, W]`` tensor (uint8 0..255, or float 0..1) with C in (1, 3, 4) -> a PIL RGB image
    (alpha dropped, grey repeated).

    Raises ``TypeError`` for another kind of input and :class:`DataError` (a ``ValueError``) for
    an empty image or a float tensor with NaN/inf or values outside [0, 1].
    """
    if isinstance(image, Image.Image):
        return to_rgb8(image)
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] not in (1, 3, 4):
            raise DataError(f"expected an image tensor of shape [C, H, W] with C in (1, 3, 4), "
                            f"got {list(image.shape)}")
        t = image.detach().cpu()
        if t.is_floating_point():
            if t.numel() and not bool(torch.isfinite(t).all()):
                raise DataError(f"the float image tensor contains NaN or inf ({int((~torch.isfinite(t)).sum())} "
                                "values); expected finite values in [0, 1]")
            if t.numel() and not (t.min() >= 0 and t.max() <= 1):
                raise DataError("expected a float image tensor with values in [0, 1] (not normalised: "
                                "preprocessing normalises with the model's mean and std)")
            t = (t * 255).round().to(torch.uint8)
        elif t.dtype != torch.uint8:
            raise TypeError(f"expected a uint8 or float image tensor, got {t.dtype}")
        array = t.permute(1, 2, 0).numpy()
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise TypeError(f"expected a PIL image, a uint8 array or a [C, H, W] tensor, got {type(image).__name__}")
    return array_to_rgb(array)


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
    """One image (see :func:`to_pil_rgb`) -> the network's float32 ``[3, H, W]`` input
    (``image_size``: one side or (H, W))."""
    pil = to_pil_rgb(image)
    h, w = as_hw(image_size)
    return torch.from_numpy(normalise(resize_rgb(pil, h, w, resize), mean, std))
