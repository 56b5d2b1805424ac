"""COCO box AP through pycocotools."""
from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np

COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def detections_to_coco(detections, image_ids, label_to_cat_id=None):
    """Per-image detection dicts -> a COCO result list.

    Args:
        detections: one dict per image with pixel ``boxes`` [N,4] (x1,y1,x2,y2, continuous
            coordinates), ``scores`` [N] and ``labels`` [N].
        image_ids: the COCO image id of each entry.
        label_to_cat_id: label -> category id (``COCODataset.label_to_cat_id``); default identity.
    """
    if len(detections) != len(image_ids):
        raise ValueError(f"detections_to_coco: {len(detections)} detection entries but {len(image_ids)} image ids")
    results = []
    for det, image_id in zip(detections, image_ids):
        boxes = np.asarray(det["boxes"].detach().cpu() if hasattr(det["boxes"], "detach") else det["boxes"],
                           np.float64).reshape(-1, 4)
        scores = np.asarray(det["scores"].detach().cpu() if hasattr(det["scores"], "detach") else det["scores"],
                            np.float64).reshape(-1)
        labels = np.asarray(det["labels"].detach().cpu() if hasattr(det["labels"], "detach") else det["labels"],
                            np.int64).reshape(-1)
        for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
            if label < 1:
                continue  # padding
            cat = label_to_cat_id[label] if label_to_cat_id is not None else label
            results.append({"image_id": image_id, "category_id": int(cat),
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    return results


def coco_eval(annotation_json, results, image_ids=None, verbose=False):
    """COCO box AP of ``results`` (a result list or a results JSON path) against ``annotation_json``.

    ``image_ids`` restricts the evaluation to those images (default: all in the
    annotation file). Returns {"AP", "AP50", "AP75", "APs", "APm", "APl"} as
    fractions; pycocotools' -1 (no GT in an area range) is kept. With no
    detections at all every metric is 0.0 (pycocotools itself refuses an empty list).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if isinstance(results, (str, os.PathLike)):
        with open(results, encoding="utf-8") as f:
            try:
                results = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{results}: malformed JSON: {exc}") from None
    if len(results) == 0:
        return {k: 0.0 for k in COCO_METRICS}
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        try:
            gt = COCO(os.fspath(annotation_json))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{annotation_json}: malformed JSON: {exc}") from None
        dt = gt.loadRes(list(results))
        ev = COCOeval(gt, dt, "bbox")
        if image_ids is not None:
            ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(v) for k, v in zip(COCO_METRICS, ev.stats[:6])}
