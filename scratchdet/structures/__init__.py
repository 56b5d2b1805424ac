"""The bottom layer that models, data and evaluation share: error types, image conversion and the
input spec, target padding and checks, atomic file writes. It imports nothing above it."""
from .errors import BadImageError, CheckpointError, ConfigError, DataError, UserError
from .files import atomic_save
from .image import (RESIZE_FILTERS, as_hw, check_input_spec, normalise, read_image, read_image_size,
                    resize_and_normalise, to_pil_rgb, to_rgb8)
from .targets import as_padded_targets, check_target_labels, collate_detection, pad_targets

__all__ = ["UserError", "ConfigError", "DataError", "BadImageError", "CheckpointError", "atomic_save",
           "RESIZE_FILTERS", "as_hw", "check_input_spec", "normalise", "read_image", "read_image_size",
           "resize_and_normalise", "to_pil_rgb", "to_rgb8",
           "as_padded_targets", "check_target_labels", "collate_detection", "pad_targets"]
