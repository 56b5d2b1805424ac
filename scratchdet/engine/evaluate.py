"""Runs a detector over a data set and scores it (VOC mAP; COCO AP via pycocotools)."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Subset


@torch.no_grad()
def predict_dataset(model, dataset, batch_size: int = 16, device="cpu", max_images: int = 0, workers: int = 0,
                    memory_format=torch.contiguous_format):
    """Detections and annotations per image, boxes in original pixel coordinates."""
    from ..data import collate_detection

    base = dataset
    if max_images and max_images < len(dataset):
        dataset = Subset(dataset, range(max_images))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate_detection)
    was_training = model.training
    model.eval()
    detections, annotations = [], []
    try:
        for images, targets, metas in loader:
            boxes, scores, labels, num = model(images.to(device).contiguous(memory_format=memory_format))
            boxes, scores, labels, num = boxes.cpu(), scores.cpu(), labels.cpu(), num.cpu()
            for i, meta in enumerate(metas):
                h, w = meta["orig_size"]
                scale = torch.tensor([w, h, w, h], dtype=torch.float32)
                n = int(num[i])
                detections.append({"boxes": boxes[i, :n].float() * scale, "scores": scores[i, :n].float(),
                                   "labels": labels[i, :n]})
                if hasattr(base, "get_annotation"):  # the original pixel annotation, as the devkit scores it
                    annotations.append(base.get_annotation(len(annotations)))
                else:
                    valid = targets["labels"][i] > 0
                    annotations.append({"boxes": targets["boxes"][i][valid].float() * scale,
                                        "labels": targets["labels"][i][valid],
                                        "difficult": targets["difficult"][i][valid],
                                        "image_id": meta.get("image_id")})
    finally:
        model.train(was_training)
    return detections, annotations


def evaluate_model(model, dataset, batch_size: int = 16, device="cpu", max_images: int = 0, workers: int = 0,
                   use_07_metric: bool = True, memory_format=torch.contiguous_format) -> dict:
    from ..evaluation import voc_eval

    detections, annotations = predict_dataset(model, dataset, batch_size, device, max_images, workers, memory_format)
    result = voc_eval(detections, annotations, iou_threshold=0.5, use_07_metric=use_07_metric)
    result["num_images"] = len(detections)
    result["detections"], result["annotations"] = detections, annotations
    return result
