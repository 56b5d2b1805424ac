"""Evaluation by tiled inference: the evaluation of a model trained on tiles (``train_tile``).

The validation set's own transform resizes each whole image to the network, which is what tiled
training avoids; this reads each validation image at its native resolution instead, runs
``model.predict(..., tile=...)`` on it and scores the detections with the same VOC mAP as
:func:`scratchdet.evaluation.evaluate.evaluate_model`.
"""
from __future__ import annotations

from ..evaluation.evaluate import base_dataset, pixel_inclusive
from ..evaluation.voc import voc_eval
from ..models.tiling import DEFAULT_OVERLAP
from ..structures.image import read_image

__all__ = ["evaluate_tiled"]


def evaluate_tiled(model, dataset, tile: int, overlap: float = DEFAULT_OVERLAP, max_images: int = 0,
                   batch_size: int = 16, use_07_metric: bool = True, whole_image: bool = False) -> dict:
    """VOC mAP (IoU 0.5) of ``model.predict(image, tile=tile, tile_overlap=overlap)`` over ``dataset``
    (a VOC / COCO / YOLO data set: its records' image files and pixel annotations). Returns what
    ``evaluate_model`` returns for VOC: ``map``, ``ap``, ``num_images``, ``detections``, ``annotations``."""
    base = base_dataset(dataset)
    count = len(base) if not max_images else min(max_images, len(base))
    detections, annotations = [], []
    for index in range(count):
        image = read_image(base.records[index].image_path)
        detections += model.predict(image, tile=tile, tile_overlap=overlap, batch_size=batch_size,
                                    tile_whole_image=whole_image)
        annotations.append(base.get_annotation(index))
    result = voc_eval(detections, annotations, iou_threshold=0.5, use_07_metric=use_07_metric,
                      pixel_inclusive=pixel_inclusive(dataset))
    result["num_images"] = count
    result["detections"], result["annotations"] = detections, annotations
    return result
