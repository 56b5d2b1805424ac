"""Deprecated location: evaluation moved to :mod:`scratchdet.evaluation.evaluate`; re-exported here
so that ``scratchdet.engine.evaluate.evaluate_model`` keeps working."""
from ..evaluation.evaluate import base_dataset, evaluate_model, pixel_inclusive, predict_dataset  # noqa: F401

__all__ = ["base_dataset", "pixel_inclusive", "predict_dataset", "evaluate_model"]
