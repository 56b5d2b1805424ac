"""ScratchDet: single-shot object detectors trained from scratch, with fast kernels.

``import scratchdet`` loads the compiled ops; the rest is imported on first use.
"""
import importlib

__version__ = "0.1.0"

try:
    from . import ops  # noqa: E402,F401  (loads the compiled kernels)
except ImportError as exc:  # no torch: scratchdet.runtime still works; `scratchdet.ops` raises on first use
    if exc.name != "torch" and not str(exc.name or "").startswith("torch."):
        raise

# public name -> (module, attribute); imported lazily so `import scratchdet` stays light
_LAZY = {
    "ops": ("scratchdet.ops", None),
    "models": ("scratchdet.models", None),
    "data": ("scratchdet.data", None),
    "evaluation": ("scratchdet.evaluation", None),
    "engine": ("scratchdet.engine", None),
    "build_model": ("scratchdet.models", "build_model"),
    "build_detector": ("scratchdet.models", "build_detector"),
    "list_models": ("scratchdet.models", "list_models"),
    "SSDConfig": ("scratchdet.models.config", "SSDConfig"),
    "save": ("scratchdet.models.io", "save"),
    "load": ("scratchdet.models.io", "load"),
    "fuse": ("scratchdet.models.fuse", "fuse"),
    "FastPredictor": ("scratchdet.models.fast_inference", "FastPredictor"),
    "quantize": ("scratchdet.models.quantize", "quantize"),
    "load_quantized": ("scratchdet.models.quantize", "load_quantized"),
}

__all__ = ["__version__", *_LAZY]   # _LAZY starts with "ops"


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'scratchdet' has no attribute '{name}'")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value
