"""scratchdet.data: VOC, COCO and YOLO readers, the SSD augmentation pipeline, the synthetic data set.

Every reader yields ``(image, target)`` with pixel boxes; with an
:class:`SSDTransform` it yields a normalised image tensor and [0, 1] boxes, and
:func:`collate_detection` (from :mod:`scratchdet.structures.targets`) pads a batch for ``match_priors``.
"""
from ..structures.errors import BadImageError
from ..structures.targets import collate_detection
from .coco import COCODataset
from .dataset import DetectionDataset
from .transforms import SSDTransform
from .voc import VOC_CLASSES, VOCDataset
from .yolo import YOLODataset
from . import synth  # noqa: E402

__all__ = ["VOCDataset", "COCODataset", "YOLODataset", "DetectionDataset", "BadImageError", "SSDTransform",
           "collate_detection", "VOC_CLASSES", "synth"]
