"""COCO-style reader: any data set in COCO instances JSON form works with no code.

Categories map to labels 1..K in increasing category id; ``ds.cat_ids[label - 1]``
(or ``ds.label_to_cat_id``) maps back for COCO result files. Boxes are COCO's
continuous pixel coordinates, returned as (x, y, x + w, y + h); evaluate them
with ``voc_eval(..., pixel_inclusive=False)`` or with :func:`coco_eval`.
"""
from __future__ import annotations

import json
import os

import numpy as np

from ._boxes import clip_and_filter, warn_dropped
from .dataset import DetectionDataset, Record


def load_coco_json(path):
    """Read and check the top level of an instances file; errors name the file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: malformed JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path}: not a COCO instances file (needs an 'images' list)")
    for key in ("annotations", "categories"):
        if not isinstance(data.get(key, []), list):
            raise ValueError(f"{path}: '{key}' must be a list")
    return data


class COCODataset(DetectionDataset):
    """COCO instances data.

    Args:
        image_dir: folder that the images' ``file_name`` is relative to.
        annotation_json: the instances JSON file.
        transform: called as ``transform(image, target, index=i)``.
        crowd: what to do with ``iscrowd`` boxes: "difficult" (keep them, flagged
            difficult, so VOC evaluation ignores them and training can drop them) or "drop".
        classes: optional category names to keep, in label order; an unknown name
            raises an error listing the known ones. Default: all categories.
        skip_bad_images: see :class:`DetectionDataset`.

    A non-standard ``"difficult": 1`` on an annotation (the synthetic data set
    writes it) also flags it difficult. Images with no annotations are kept.
    """

    def __init__(self, image_dir, annotation_json, transform=None, crowd="difficult", classes=None,
                 skip_bad_images=False):
        if crowd not in ("difficult", "drop"):
            raise ValueError(f"COCODataset: crowd must be 'difficult' or 'drop', got {crowd!r}")
        path = os.fspath(annotation_json)
        data = load_coco_json(path)
        try:
            cats = sorted(data.get("categories", []), key=lambda c: c["id"])
            names_by_id = {c["id"]: c["name"] for c in cats}
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path}: bad 'categories' entry: {exc!r}") from None
        if classes is not None:
            by_name = {name: cid for cid, name in names_by_id.items()}
            unknown = [n for n in classes if n not in by_name]
            if unknown:
                raise ValueError(f"{path}: unknown class(es) {unknown}; known classes: {', '.join(by_name)}")
            cat_ids = [by_name[n] for n in classes]
        else:
            cat_ids = list(names_by_id)
        self.cat_ids = cat_ids
        self.label_to_cat_id = {i + 1: cid for i, cid in enumerate(cat_ids)}
        cat_to_label = {cid: i + 1 for i, cid in enumerate(cat_ids)}

        per_image = {}
        try:
            for ann in data.get("annotations", []):
                per_image.setdefault(ann["image_id"], []).append(ann)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path}: bad 'annotations' entry: {exc!r}") from None

        records, dropped, total = [], 0, 0
        for img in data["images"]:
            try:
                image_id, file_name = img["id"], img["file_name"]
                width, height = img.get("width"), img.get("height")
                boxes, labels, difficult = [], [], []
                for ann in per_image.get(image_id, []):
                    cid = ann["category_id"]
                    if cid not in cat_to_label:
                        if cid in names_by_id:
                            continue  # a category the caller left out
                        raise ValueError(f"annotation {ann.get('id')} has category_id {cid}, "
                                         f"which is not in 'categories' ({sorted(names_by_id)})")
                    crowd_box = bool(ann.get("iscrowd", 0))
                    if crowd_box and crowd == "drop":
                        continue
                    x, y, w, h = (float(v) for v in ann["bbox"])
                    boxes.append([x, y, x + w, y + h])
                    labels.append(cat_to_label[cid])
                    difficult.append(crowd_box or bool(ann.get("difficult", 0)))
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}: image {img.get('id') if isinstance(img, dict) else img!r}: "
                                 f"{exc}") from None
            boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
            size_known = bool(width) and bool(height)
            boxes, keep = clip_and_filter(boxes, width if size_known else np.inf,
                                          height if size_known else np.inf)
            dropped += int((~keep).sum())
            total += len(keep)
            records.append(Record(os.path.join(os.fspath(image_dir), file_name), image_id, boxes[keep],
                                  np.asarray(labels, np.int64)[keep], np.asarray(difficult, bool)[keep],
                                  int(width) if size_known else None, int(height) if size_known else None))
        warn_dropped(dropped, total, f"COCODataset({path})")
        self.annotation_json = path
        super().__init__(records, [names_by_id[c] for c in cat_ids], transform, skip_bad_images)
