"""Runs a detector over a data set and scores it: the one evaluation path of the trainer and `scratchdet eval`.

VOC mAP (devkit semantics) with the box convention the data set declares, and COCO AP
through pycocotools when the data set is a COCO json.

It imports neither models nor data: the model is anything with ``forward(images)`` returning the
``detect`` output, ``postprocess(outputs, sizes)``, ``eval()`` / ``train()``; the data set yields
``(image tensor, target)`` pairs that :func:`scratchdet.structures.targets.collate_detection` batches.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Subset

from ..structures.targets import collate_detection
from .coco import coco_eval, detections_to_coco
from .voc import voc_eval

__all__ = ["base_dataset", "pixel_inclusive", "predict_dataset", "evaluate_model"]


def base_dataset(dataset):
    """The data set under any ``torch.utils.data.Subset`` wrappers."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


def pixel_inclusive(dataset) -> bool:
    """The box convention VOC mAP must use for ``dataset``: the devkit's +1 pixel widths for VOC's
    inclusive pixel indices (``VOCDataset.pixel_inclusive``), none for continuous (COCO) boxes."""
    return bool(getattr(base_dataset(dataset), "pixel_inclusive", False))


@torch.no_grad()
def predict_dataset(model, dataset, batch_size: int = 16, device="cpu", max_images: int = 0, workers: int = 0,
                    memory_format=torch.contiguous_format):
    """Detections and annotations per image, boxes in original pixel coordinates.

    ``dataset`` yields the network's input (its transform is the model's evaluation transform,
    ``SSDTransform.from_config(model.config)``, the pixels ``model.predict`` sees) and the
    detections go through ``model.postprocess``, as in ``predict``.
    """
    base = base_dataset(dataset)
    if max_images and max_images < len(dataset):
        dataset = Subset(dataset, range(max_images))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate_detection)
    was_training = model.training
    model.eval()
    detections, annotations = [], []
    try:
        for images, targets, metas in loader:
            out = model(images.to(device).contiguous(memory_format=memory_format))
            sizes = [(w, h) for h, w in (meta["orig_size"] for meta in metas)]
            detections += model.postprocess(out, sizes)
            for i, (meta, (w, h)) in enumerate(zip(metas, sizes)):
                if hasattr(base, "get_annotation"):  # the original pixel annotation, as the devkit scores it
                    annotations.append(base.get_annotation(len(annotations)))
                else:
                    valid = targets["labels"][i] > 0
                    scale = torch.tensor([w, h, w, h], dtype=torch.float32)
                    annotations.append({"boxes": targets["boxes"][i][valid].float() * scale,
                                        "labels": targets["labels"][i][valid],
                                        "difficult": targets["difficult"][i][valid],
                                        "image_id": meta.get("image_id")})
    finally:
        model.train(was_training)
    return detections, annotations


def evaluate_model(model, dataset, batch_size: int = 16, device="cpu", max_images: int = 0, workers: int = 0,
                   use_07_metric: bool = True, memory_format=torch.contiguous_format, coco: bool = True,
                   return_curves: bool = False) -> dict:
    """VOC mAP at IoU 0.5 (``use_07_metric``: 11-point) with the data set's box convention
    (:func:`pixel_inclusive`), plus ``result["coco"]`` (AP, AP50, AP75, APs/m/l) when ``coco`` and the
    data set is a COCO json. Also returns the per-image ``detections`` and ``annotations``."""
    detections, annotations = predict_dataset(model, dataset, batch_size, device, max_images, workers, memory_format)
    result = voc_eval(detections, annotations, iou_threshold=0.5, use_07_metric=use_07_metric,
                      pixel_inclusive=pixel_inclusive(dataset), return_curves=return_curves)
    base = base_dataset(dataset)
    if coco and getattr(base, "annotation_json", None):
        image_ids = [a["image_id"] for a in annotations]
        result["coco"] = coco_eval(base.annotation_json, detections_to_coco(detections, image_ids,
                                                                            base.label_to_cat_id),
                                   image_ids=image_ids)
    result["num_images"] = len(detections)
    result["detections"], result["annotations"] = detections, annotations
    return result
