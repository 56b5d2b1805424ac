"""Deprecated location: the image conversion and input spec now live in
:mod:`scratchdet.structures.image`, and the model's ``preprocess`` / ``postprocess`` in
:mod:`scratchdet.models.transform` (``model.preprocess`` / ``model.postprocess``). This module
re-exports the former so old imports keep working."""
from ..structures.image import (RESIZE_FILTERS, as_hw, check_input_spec, normalise, read_image,  # noqa: F401
                                resize_and_normalise, to_pil_rgb, to_rgb8)

__all__ = ["RESIZE_FILTERS", "as_hw", "check_input_spec", "normalise", "read_image", "resize_and_normalise",
           "to_pil_rgb", "to_rgb8"]
