"""The bottom layer that models, data and evaluation share: error types, image conversion and the
input spec, target padding and checks, atomic file writes. It imports nothing above it."""
from .errors import BadImageError, CheckpointError, ConfigError, DataError, UserError
from .files import atomic_save

__all__ = ["UserError", "ConfigError", "DataError", "BadImageError", "CheckpointError", "atomic_save"]
