"""Images: the one file reader, conversion to 8-bit RGB, and the model's input spec.

Everything that turns pixels into the network's input lives here, so that the data pipeline
(``scratchdet.data``), the model's transform (``scratchdet.models.transform``) and the commands
see identical pixels:

- :func:`read_image` opens every image file the package reads (data sets, ``scratchdet detect``,
  the demo); :func:`to_rgb8` is its mode conversion, also applied to PIL images given to
  ``model.predict``.
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
import os
import struct

import numpy as np
import torch
from PIL import Image, ImageOps

from ..constants import MEAN, STD
from .errors import BadImageError, ConfigError, DataError

__all__ = ["RESIZE_FILTERS", "as_hw", "check_input_spec", "read_image", "read_image_size", "to_rgb8", "to_pil_rgb",
           "normalise", "resize_and_normalise"]

# resize name (model.config resize) -> PIL filter. PIL's filters widen their support when
# downsampling, so "bilinear" is antialiased.
RESIZE_FILTERS = {
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "nearest": Image.NEAREST,
    "box": Image.BOX,
}

# what a damaged or unsupported file makes Pillow raise while opening, decoding or converting it
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)
_EXIF_ORIENTATION = 0x0112


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


# ------------------------------------------------------------------ files
def read_image(path) -> Image.Image:
    """The image file at ``path`` as an upright 8-bit RGB PIL image (loaded, the file closed).

    - **Orientation**: the EXIF orientation tag is applied (``PIL.ImageOps.exif_transpose``).
      LabelImg, CVAT, Label Studio and web browsers show an image upright per its EXIF tag, so
      the boxes drawn there are in that displayed frame; reading the raw sensor frame would put
      every box of a rotated photo in the wrong place.
    - **Modes**: every mode Pillow opens becomes 8-bit RGB by :func:`to_rgb8`: 16-bit, 32-bit and
      float images are stretched by their own value range, alpha is dropped (see there).
    - **Errors**: a missing file, or one Pillow cannot decode (zero bytes, truncated, not an
      image), raises :class:`~scratchdet.structures.errors.BadImageError` naming the file and
      Pillow's reason.
    """
    path = os.fspath(path)
    try:
        with Image.open(path) as img:
            img.load()                                  # decode now: a truncated file fails here
            img = ImageOps.exif_transpose(img)          # a loaded copy, upright
            return to_rgb8(img)
    except FileNotFoundError:
        raise BadImageError(f"image file not found: {path}") from None
    except _DECODE_ERRORS as exc:
        raise BadImageError(f"cannot decode image {path}: {exc or type(exc).__name__}") from exc


def read_image_size(path) -> tuple[int, int]:
    """(width, height) of the image file at ``path`` as :func:`read_image` returns it (upright per
    its EXIF orientation), from the header where the format allows; :class:`BadImageError` as there."""
    path = os.fspath(path)
    try:
        with Image.open(path) as img:
            width, height = img.size
            orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except FileNotFoundError:
        raise BadImageError(f"image file not found: {path}") from None
    except _DECODE_ERRORS as exc:
        raise BadImageError(f"cannot decode image {path}: {exc or type(exc).__name__}") from exc
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)   # the quarter turns


def _stretch_to_uint8(values: np.ndarray) -> np.ndarray:
    """A numeric image -> uint8 by its own range: min -> 0, max -> 255, linear (rounded) between.

    The range is taken over the finite values; NaN becomes 0, +inf 255 and -inf 0. A constant
    image (min == max) keeps its value clipped to 0..255 (an all-zero mask stays black, an
    all-65535 one is white): it has no range to stretch.
    """
    x = values.astype(np.float64)
    finite = np.isfinite(x)
    if not finite.any():
        return np.where(x == np.inf, 255, 0).astype(np.uint8)
    lo, hi = float(x[finite].min()), float(x[finite].max())
    if hi > lo:
        out = (x - lo) * (255.0 / (hi - lo))
    else:
        out = np.full_like(x, min(max(lo, 0.0), 255.0))
    out = np.where(np.isnan(x), 0.0, np.where(x == np.inf, 255.0, np.where(x == -np.inf, 0.0, out)))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def to_rgb8(image: Image.Image) -> Image.Image:
    """Any PIL image -> 8-bit RGB, with one rule per kind of mode:

    - ``RGB``: unchanged. ``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: Pillow's
      ``convert("RGB")``.
    - Alpha (``RGBA``, ``LA``, ``PA``, ``RGBa``, ``P`` or ``L`` with a transparent colour): the
      alpha is **dropped** and the stored colour kept, not composited on a background. This is
      what Pillow's ``convert`` and OpenCV's ``imread`` do, and what :func:`to_pil_rgb` does with
      a 4-channel array, so a file and its decoded array give the same pixels.
    - 16-bit, 32-bit integer and float (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``, ``I``, ``F``):
      stretched by the image's own value range, min -> 0 and max -> 255 (linear, rounded; a
      constant image keeps its value clipped to 0..255; NaN -> 0), then grey -> RGB. Pillow's own
      ``convert`` saturates at 255, which turns a 16-bit image white.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        grey = _stretch_to_uint8(np.asarray(image))
        return Image.fromarray(grey.reshape(grey.shape[:2]), "L").convert("RGB")
    if mode == "La":                                    # premultiplied grey + alpha: keep the grey
        return image.getchannel(0).convert("RGB")
    return image.convert("RGB")


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
        if image.dtype != np.uint8:
            raise TypeError(f"expected a uint8 image array, got {image.dtype}")
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise DataError(f"expected an image array of shape [H, W] or [H, W, C] with C in (1, 3, 4), "
                            f"got {list(image.shape)}")
        array = image
    else:
        raise TypeError(f"expected a PIL image, a uint8 array or a [C, H, W] tensor, got {type(image).__name__}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    if array.size == 0:
        raise DataError(f"expected a non-empty image, got shape {list(array.shape)}")
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
    """One image (see :func:`to_pil_rgb`) -> the network's float32 ``[3, H, W]`` input
    (``image_size``: one side or (H, W))."""
    pil = to_pil_rgb(image)
    h, w = as_hw(image_size)
    return torch.from_numpy(normalise(pil.resize((w, h), RESIZE_FILTERS[resize]), mean, std))
