"""The bottom layer that models, data and evaluation share: error types, image conversion and the
input spec, target padding and checks, atomic file writes. It imports nothing above it.

``errors`` and ``image_io`` need no torch: ``scratchdet.runtime`` imports them where torch is not
installed, so the torch-backed modules are imported only when torch is there."""
from .errors import BadImageError, CheckpointError, ConfigError, DataError, UserError
from .image_io import RESIZE_FILTERS, read_image, read_image_size, to_rgb8

try:
    from .files import atomic_save
    from .image import as_hw, check_input_spec, normalise, resize_and_normalise, to_pil_rgb
    from .targets import as_padded_targets, check_target_labels, collate_detection, pad_targets
except ImportError as exc:  # no torch: only the torch-free part (scratchdet.runtime's image reading)
    if exc.name != "torch" and not str(exc.name or "").startswith("torch."):
        raise

__all__ = ["UserError", "ConfigError", "DataError", "BadImageError", "CheckpointError", "atomic_save",
           "RESIZE_FILTERS", "as_hw", "check_input_spec", "normalise", "read_image", "read_image_size",
           "resize_and_normalise", "to_pil_rgb", "to_rgb8",
           "as_padded_targets", "check_target_labels", "collate_detection", "pad_targets"]
