"""YOLO txt reader: the ``data.yaml`` + ``images/<split>/`` + ``labels/<split>/`` layout (ultralytics).

``data.yaml`` names the class list (``names``: a list, or a dict index -> name) and each split
(``train: images/train``: a folder of images, a ``.txt`` list of image paths, or a list of
either), relative to ``path`` (default: the yaml's folder). An image ``.../images/<x>/a.jpg``
has its labels in ``.../labels/<x>/a.txt``, one object a line: ``class cx cy w h``, normalised
to [0, 1] (a polygon ``class x1 y1 x2 y2 ...`` is read as its bounding box). A missing or empty
label file is an image with no objects. YOLO class ``k`` is label ``k + 1`` here (0 is background).

Boxes are clipped to the image and degenerate ones are dropped with one warning that counts
them; a malformed line or a class outside ``names`` raises an error naming the file and line.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from ._boxes import clip_and_filter, warn_dropped
from .dataset import BadImageError, DetectionDataset, Record

__all__ = ["YOLODataset", "read_data_yaml", "IMAGE_EXTS"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def read_data_yaml(path: str) -> dict:
    """The parsed ``data.yaml`` with ``names`` as a list and ``path`` resolved; errors name the file."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"YOLO data file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: malformed YAML: {exc}") from None
    if not isinstance(data, dict) or "names" not in data:
        raise ValueError(f"{path}: not a YOLO data file (needs 'names' and the splits, e.g. 'train: images/train')")
    names = data["names"]
    if isinstance(names, dict):
        keys = sorted(names)
        if keys != list(range(len(keys))):
            raise ValueError(f"{path}: 'names' must be indexed 0..{len(keys) - 1}, got {keys}")
        names = [names[k] for k in keys]
    if not isinstance(names, list) or not names or len(set(map(str, names))) != len(names):
        raise ValueError(f"{path}: 'names' must be a non-empty list of distinct class names")
    root = data.get("path") or "."
    if not os.path.isabs(root):
        root = os.path.join(os.path.dirname(os.path.abspath(path)), root)
    return {**data, "names": [str(n) for n in names], "path": os.path.normpath(root)}


def _label_path(image_path: str) -> str:
    """ultralytics' rule: the last ``/images/`` of the path becomes ``/labels/``, the extension ``.txt``."""
    head, sep, tail = image_path.rpartition(f"{os.sep}images{os.sep}")
    base = f"{head}{os.sep}labels{os.sep}{tail}" if sep else image_path
    return os.path.splitext(base)[0] + ".txt"


def _split_images(root: str, entry, yaml_path: str, split: str) -> list[str]:
    entries = entry if isinstance(entry, list) else [entry]
    images = []
    for e in entries:
        p = e if os.path.isabs(str(e)) else os.path.join(root, str(e))
        if os.path.isdir(p):
            images += sorted(os.path.join(p, f) for f in os.listdir(p) if f.lower().endswith(IMAGE_EXTS))
        elif os.path.isfile(p) and p.endswith(".txt"):
            with open(p, encoding="utf-8") as f:
                for line in f:
                    line = line.strip()
                    if line:
                        images.append(line if os.path.isabs(line) else os.path.normpath(os.path.join(root, line)))
        else:
            raise FileNotFoundError(f"{yaml_path}: split {split!r} points to {p}, which is neither a folder "
                                    "of images nor a .txt list of images")
    return images


def parse_yolo_labels(path: str, num_classes: int):
    """``(classes [M] int64, boxes [M, 4] normalised x1 y1 x2 y2)`` of one label file (none if missing)."""
    if not os.path.isfile(path):
        return np.zeros(0, np.int64), np.zeros((0, 4), np.float64)
    classes, boxes = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            try:
                values = [float(v) for v in fields]
            except ValueError:
                raise ValueError(f"{path}:{n}: not numbers: {line.strip()!r}") from None
            if len(values) < 5 or (len(values) > 5 and len(values) % 2 == 0):
                raise ValueError(f"{path}:{n}: expected 'class cx cy w h' (or 'class x1 y1 x2 y2 ...' for a "
                                 f"polygon), got {len(values)} values: {line.strip()!r}")
            cls = values[0]
            if cls != int(cls) or not 0 <= cls < num_classes:
                raise ValueError(f"{path}:{n}: class {fields[0]} is not one of the {num_classes} classes in "
                                 f"data.yaml's names (0..{num_classes - 1})")
            if len(values) == 5:
                cx, cy, w, h = values[1:]
                boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
            else:
                xy = np.asarray(values[1:]).reshape(-1, 2)
                boxes.append([*xy.min(0), *xy.max(0)])
            classes.append(int(cls))
    return np.asarray(classes, np.int64), np.asarray(boxes, np.float64).reshape(-1, 4)


class YOLODataset(DetectionDataset):
    """YOLO txt detection data.

    Args:
        data_yaml: the ``data.yaml`` file, or a folder holding one.
        split: the data.yaml key of the split to read ("train", "val", "test").
        transform: called as ``transform(image, target, index=i)``.
        skip_bad_images: see :class:`DetectionDataset`.

    ``classes`` are data.yaml's ``names``; label ``k + 1`` is YOLO class ``k``.
    """

    def __init__(self, data_yaml, split: str = "train", transform=None, skip_bad_images: bool = False):
        path = os.fspath(data_yaml)
        if os.path.isdir(path):
            path = os.path.join(path, "data.yaml")
        data = read_data_yaml(path)
        if split not in data or data[split] in (None, ""):
            raise ValueError(f"{path}: no split {split!r} (it has: "
                             f"{', '.join(k for k in ('train', 'val', 'test') if data.get(k)) or 'none'})")
        names = data["names"]
        records, dropped, total = [], 0, 0
        for image_path in _split_images(data["path"], data[split], path, split):
            classes, boxes = parse_yolo_labels(_label_path(image_path), len(names))
            width = height = None
            try:
                with Image.open(image_path) as img:     # reads the header only
                    width, height = img.size
            except (OSError, ValueError) as exc:
                if not skip_bad_images:
                    what = "not found" if isinstance(exc, FileNotFoundError) else f"cannot be read ({exc})"
                    raise BadImageError(f"image file {what}: {image_path}") from None
            if width:
                boxes, keep = clip_and_filter(np.clip(boxes, 0.0, 1.0) * [width, height, width, height],
                                              width, height)
            else:   # unreadable: DetectionDataset skips it (skip_bad_images) before its boxes matter
                keep = np.zeros(len(boxes), bool)
            dropped += int((~keep).sum())
            total += len(keep)
            stem = os.path.splitext(os.path.basename(image_path))[0]
            records.append(Record(image_path, stem, np.asarray(boxes, np.float32)[keep], classes[keep] + 1,
                                  np.zeros(int(keep.sum()), bool), width, height))
        warn_dropped(dropped, total, f"YOLODataset({path}, split={split!r})")
        self.data_yaml = path
        self.split = split
        super().__init__(records, names, transform, skip_bad_images)
