"""Reading images into 8-bit RGB with numpy and Pillow only (no torch).

The one place where image files are opened and where any image is brought to 8-bit RGB: the package
(``scratchdet.structures.image``, and through it the data sets, ``model.predict`` and ``scratchdet detect``)
and the torch-free runtime (``scratchdet.runtime``) both call these functions, so an exported detector
sees the pixels the eager model sees (EXIF orientation applied, 16-bit images stretched, alpha dropped).
"""
from __future__ import annotations

import os
import struct

import numpy as np
from PIL import Image, ImageOps

from .errors import BadImageError, DataError

__all__ = ["RESIZE_FILTERS", "read_image", "read_image_size", "to_rgb8", "array_to_rgb", "resize_rgb"]

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
      what Pillow's ``convert`` and OpenCV's ``imread`` do, and what :func:`array_to_rgb` does with
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


def array_to_rgb(array: np.ndarray) -> Image.Image:
    """A uint8 ``[H, W]`` / ``[H, W, C]`` array (C in 1, 3, 4; RGB order) -> PIL RGB, alpha dropped and grey
    repeated. ``TypeError`` for another dtype, :class:`DataError` (a ``ValueError``) for another shape or an
    empty image."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(array).__name__}")
    if array.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image array, got {array.dtype}")
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise DataError(f"expected an image array of shape [H, W] or [H, W, C] with C in (1, 3, 4), "
                        f"got {list(array.shape)}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    if array.size == 0:
        raise DataError(f"expected a non-empty image, got shape {list(array.shape)}")
    return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")


def resize_rgb(image: Image.Image, height: int, width: int, resize: str = "bilinear") -> Image.Image:
    """An RGB PIL image resized to ``width x height`` with the model's filter (``RESIZE_FILTERS``)."""
    return image.resize((int(width), int(height)), RESIZE_FILTERS[resize])
