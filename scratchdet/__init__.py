"""ScratchDet: single-shot object detectors trained from scratch, with fast kernels."""
__version__ = "0.1.0"

from . import ops  # noqa: F401  (loads the compiled kernels)

__all__ = ["ops", "__version__"]
