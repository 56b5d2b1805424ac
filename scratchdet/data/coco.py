"""COCO-style reader: any data set in COCO instances JSON form works with no code.

Categories map to labels 1..K in increasing category id; ``ds.cat_ids[label - 1]``
(or ``ds.label_to_cat_id``) maps back for COCO result files. Boxes are COCO's
continuous pixel coordinates, returned as (x, y, x + w, y + h); evaluate them
with ``voc_eval(..., pixel_inclusive=False)`` or with :func:`coco_eval`.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from ..structures.errors import DataError
from ._boxes import clip_and_filter, usable_side, warn_dropped
from ._text import read_text, short_repr
from .dataset import DetectionDataset, Record


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_id(value) -> bool:
    """An image id: an integer (COCO) or a string (some converters use file stems)."""
    return _is_int(value) or isinstance(value, str)


def _to_float(value) -> float:
    """A JSON number as a float; an integer too large for a float is infinite (and its box dropped)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def load_coco_json(path):
    """Read and check an instances file's top level and its ``images`` entries (an object each,
    with an integer or string ``id`` and a string ``file_name``); errors are DataErrors naming the file."""
    try:
        text = read_text(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file not found: {path}") from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise DataError(f"{path}: malformed JSON: nested too deeply") from None
    except ValueError as exc:    # JSONDecodeError, or an integer literal over Python's digit limit
        raise DataError(f"{path}: malformed JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path}: not a COCO instances file (needs an 'images' list)")
    for key in ("annotations", "categories"):
        if not isinstance(data.get(key, []), list):
            raise DataError(f"{path}: '{key}' must be a list")
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict):
            raise DataError(f"{path}: images[{i}] must be an object with 'id' and 'file_name', got {short_repr(img)}")
        if "id" not in img:
            raise DataError(f"{path}: images[{i}]: missing 'id'")
        where = f"{path}: image id {short_repr(img['id'])} (images[{i}])"
        if not _is_id(img["id"]):
            raise DataError(f"{where}: 'id' must be an integer or a string")
        if "file_name" not in img:
            raise DataError(f"{where}: missing 'file_name'")
        if not isinstance(img["file_name"], str):
            raise DataError(f"{where}: 'file_name' must be a string, got {short_repr(img['file_name'])}")
    return data


def _categories(data: dict, path: str) -> dict:
    """``{category id: name}`` in increasing id."""
    names_by_id = {}
    for i, cat in enumerate(data.get("categories", [])):
        where = f"{path}: categories[{i}]"
        if not isinstance(cat, dict):
            raise DataError(f"{where} must be an object with 'id' and 'name', got {short_repr(cat)}")
        for key in ("id", "name"):
            if key not in cat:
                raise DataError(f"{where}: missing '{key}'")
        if not _is_int(cat["id"]):
            raise DataError(f"{where}: 'id' must be an integer, got {short_repr(cat['id'])}")
        if not isinstance(cat["name"], str) or not cat["name"].strip():
            raise DataError(f"{where}: 'name' must be a non-empty string, got {short_repr(cat['name'])}")
        names_by_id[cat["id"]] = cat["name"]
    return dict(sorted(names_by_id.items()))


def _annotations_per_image(data: dict, path: str) -> dict:
    """``{image id: [(where, annotation), ...]}``; ``where`` names the file and the annotation."""
    per_image = {}
    for i, ann in enumerate(data.get("annotations", [])):
        if not isinstance(ann, dict):
            raise DataError(f"{path}: annotations[{i}] must be an object, got {short_repr(ann)}")
        where = f"{path}: annotation id {short_repr(ann['id'])} (annotations[{i}])" if "id" in ann else \
            f"{path}: annotations[{i}]"
        if "image_id" not in ann:
            raise DataError(f"{where}: missing 'image_id'")
        if not _is_id(ann["image_id"]):
            raise DataError(f"{where}: 'image_id' must be an integer or a string, got {short_repr(ann['image_id'])}")
        per_image.setdefault(ann["image_id"], []).append((where, ann))
    return per_image


def _image_size(img: dict, where: str):
    """The annotated (width, height) as ints, or (None, None) when absent or unusable (0, negative,
    NaN, infinite or absurd): the image file's size is trusted then."""
    sides = []
    for key in ("width", "height"):
        value = img.get(key)
        if value is None:
            return None, None
        if not _is_number(value):
            raise DataError(f"{where}: '{key}' must be a number, got {short_repr(value)}")
        sides.append(_to_float(value))
    if not all(usable_side(side) for side in sides):
        return None, None
    return int(sides[0]), int(sides[1])


def _flag(ann: dict, key: str, where: str) -> bool:
    value = ann.get(key, 0)
    if not isinstance(value, (int, float)):     # bool is an int
        raise DataError(f"{where}: '{key}' must be 0 or 1, got {short_repr(value)}")
    return bool(value)


def _box(ann: dict, where: str) -> list[float]:
    """COCO's [x, y, w, h] as [x1, y1, x2, y2] (not necessarily finite or non-degenerate)."""
    if "bbox" not in ann:
        raise DataError(f"{where}: missing 'bbox'")
    bbox = ann["bbox"]
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox))):
        raise DataError(f"{where}: 'bbox' must be [x, y, w, h] (4 numbers), got {short_repr(bbox)}")
    x, y, w, h = map(_to_float, bbox)
    return [x, y, x + w, y + h]


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

    Degenerate or non-finite boxes are clipped/dropped with one warning that counts them; a
    missing field or a value of the wrong type raises a :class:`DataError` naming the file and
    the entry (``images[i]``, ``annotation id N (annotations[i])``, ``categories[i]``).
    """

    def __init__(self, image_dir, annotation_json, transform=None, crowd="difficult", classes=None,
                 skip_bad_images=False):
        if crowd not in ("difficult", "drop"):
            raise ValueError(f"COCODataset: crowd must be 'difficult' or 'drop', got {crowd!r}")
        path = os.fspath(annotation_json)
        data = load_coco_json(path)
        names_by_id = _categories(data, path)
        if classes is not None:
            by_name = {name: cid for cid, name in names_by_id.items()}
            unknown = [n for n in classes if n not in by_name]
            if unknown:
                raise DataError(f"{path}: unknown class(es) {unknown}; known classes: {', '.join(by_name)}")
            cat_ids = [by_name[n] for n in classes]
        else:
            cat_ids = list(names_by_id)
        self.cat_ids = cat_ids
        self.label_to_cat_id = {i + 1: cid for i, cid in enumerate(cat_ids)}
        cat_to_label = {cid: i + 1 for i, cid in enumerate(cat_ids)}
        per_image = _annotations_per_image(data, path)

        records, dropped, total = [], 0, 0
        for i, img in enumerate(data["images"]):
            image_id = img["id"]
            width, height = _image_size(img, f"{path}: image id {short_repr(image_id)} (images[{i}])")
            boxes, labels, difficult = [], [], []
            for where, ann in per_image.get(image_id, []):
                cid = ann.get("category_id")
                if not _is_int(cid) or cid not in names_by_id:
                    raise DataError(f"{where} has category_id {short_repr(cid)}, which is not in 'categories' "
                                    f"({short_repr(list(names_by_id))})")
                if cid not in cat_to_label:
                    continue  # a category the caller left out
                crowd_box = _flag(ann, "iscrowd", where)
                if crowd_box and crowd == "drop":
                    continue
                boxes.append(_box(ann, where))
                labels.append(cat_to_label[cid])
                difficult.append(crowd_box or _flag(ann, "difficult", where))
            # no usable annotated size: clip to [0, inf) now, to the image when it is loaded
            boxes, keep = clip_and_filter(np.asarray(boxes, np.float64).reshape(-1, 4),
                                          width or np.inf, height or np.inf)
            dropped += int((~keep).sum())
            total += len(keep)
            records.append(Record(os.path.join(os.fspath(image_dir), img["file_name"]), image_id, boxes[keep],
                                  np.asarray(labels, np.int64)[keep], np.asarray(difficult, bool)[keep],
                                  width, height))
        warn_dropped(dropped, total, f"COCODataset({path})")
        self.annotation_json = path
        super().__init__(records, [names_by_id[c] for c in cat_ids], transform, skip_bad_images)
