"""YOLO txt reader: the ``data.yaml`` + ``images/<split>/`` + ``labels/<split>/`` layout (ultralytics).

``data.yaml`` names the class list (``names``: a list, or a dict index -> name) and each split
(``train: images/train``: a folder of images, a ``.txt`` list of image paths, or a list of
either), relative to ``path`` (default: the yaml's folder). An image ``.../images/<x>/a.jpg``
has its labels in ``.../labels/<x>/a.txt``, one object a line: ``class cx cy w h``, normalised
to [0, 1] (a polygon ``class x1 y1 x2 y2 ...`` is read as its bounding box). A missing or empty
label file is an image with no objects. YOLO class ``k`` is label ``k + 1`` here (0 is background).

Boxes are clipped to the image and degenerate or non-finite ones are dropped with one warning that
counts them; a malformed line or a class outside ``names`` raises a :class:`DataError` naming the
file and line. Text files may have a BOM and any line ending.
"""
from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image

from ..structures.errors import DataError
from ._boxes import clip_and_filter, warn_dropped
from ._text import read_lines, read_text, short_repr
from .dataset import BadImageError, DetectionDataset, Record

__all__ = ["YOLODataset", "read_data_yaml", "IMAGE_EXTS"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def _is_name(value) -> bool:
    """A class name: a string or a number (YAML reads ``names: [1, 2]`` as numbers), never empty."""
    return isinstance(value, (str, int, float)) and not isinstance(value, bool) and bool(str(value).strip())


def _yaml_error(path: str, exc: Exception) -> DataError:
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}:{mark.line + 1}" if mark is not None else path
    what = getattr(exc, "problem", None) or str(exc)
    return DataError(f"{where}: malformed YAML: {' '.join(str(what).split())}")


def read_data_yaml(path: str) -> dict:
    """The parsed ``data.yaml`` with ``names`` as a list and ``path`` resolved; errors name the file."""
    import yaml

    try:
        text = read_text(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"YOLO data file not found: {path}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _yaml_error(path, exc) from None
    except RecursionError:
        raise DataError(f"{path}: malformed YAML: nested too deeply") from None
    if not isinstance(data, dict) or "names" not in data:
        raise DataError(f"{path}: not a YOLO data file (needs 'names' and the splits, e.g. 'train: images/train')")
    names = data["names"]
    if isinstance(names, dict):
        keys = list(names)
        if not all(isinstance(k, int) and not isinstance(k, bool) for k in keys) or \
                sorted(keys) != list(range(len(keys))):
            raise DataError(f"{path}: 'names' must be indexed 0..{len(keys) - 1}, got {short_repr(keys)}")
        names = [names[k] for k in range(len(keys))]
    if (not isinstance(names, list) or not names or not all(map(_is_name, names))
            or len(set(map(str, names))) != len(names)):
        raise DataError(f"{path}: 'names' must be a non-empty list of distinct class names, got {short_repr(names)} "
                        "(quote names that YAML reads otherwise, e.g. 'null', 'yes', 'no')")
    root = data.get("path")
    if root is None or root == "":
        root = "."
    if not isinstance(root, str):
        raise DataError(f"{path}: 'path' must be a folder (the data set root), got {short_repr(root)}")
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
    if not all(isinstance(e, str) and e for e in entries):
        raise DataError(f"{yaml_path}: split {split!r} must be a folder or .txt list of images (or a list of "
                        f"them), got {short_repr(entry)}")
    images = []
    for e in entries:
        p = e if os.path.isabs(e) else os.path.join(root, e)
        if os.path.isdir(p):
            images += sorted(os.path.join(p, f) for f in os.listdir(p) if f.lower().endswith(IMAGE_EXTS))
        elif os.path.isfile(p) and p.endswith(".txt"):
            for line in read_lines(p):
                line = line.strip()
                if line:
                    images.append(line if os.path.isabs(line) else os.path.normpath(os.path.join(root, line)))
        else:
            raise FileNotFoundError(f"{yaml_path}: split {split!r} points to {p}, which is neither a folder "
                                    "of images nor a .txt list of images")
    return images


def parse_yolo_labels(path: str, num_classes: int):
    """``(classes [M] int64, boxes [M, 4] normalised x1 y1 x2 y2)`` of one label file (none if missing).

    Boxes may be degenerate or not finite (the caller drops them); a line that is not a box raises
    a DataError naming the file and line.
    """
    if not os.path.isfile(path):
        return np.zeros(0, np.int64), np.zeros((0, 4), np.float64)
    classes, boxes = [], []
    for n, line in enumerate(read_lines(path), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise DataError(f"{path}:{n}: not numbers: {short_repr(line.strip())}") from None
        if len(values) < 5 or (len(values) > 5 and len(values) % 2 == 0):
            raise DataError(f"{path}:{n}: expected 'class cx cy w h' (or 'class x1 y1 x2 y2 ...' for a "
                            f"polygon), got {len(values)} values: {short_repr(line.strip())}")
        cls = values[0]
        if not (math.isfinite(cls) and cls == int(cls) and 0 <= cls < num_classes):
            raise DataError(f"{path}:{n}: class {short_repr(fields[0])[1:-1]} is not one of the {num_classes} "
                            f"classes in data.yaml's names (0..{num_classes - 1})")
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
            raise DataError(f"{path}: no split {split!r} (it has: "
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
                with np.errstate(over="ignore", invalid="ignore"):     # inf/NaN boxes are dropped just below
                    pixels = boxes * [width, height, width, height]
                boxes, keep = clip_and_filter(pixels, width, height)
            else:   # unreadable: DetectionDataset skips it (skip_bad_images) before its boxes matter
                keep = np.zeros(len(boxes), bool)
            dropped += int((~keep).sum())
            total += len(keep)
            stem = os.path.splitext(os.path.basename(image_path))[0]
            records.append(Record(image_path, stem, boxes[keep].astype(np.float32), classes[keep] + 1,
                                  np.zeros(int(keep.sum()), bool), width, height))
        warn_dropped(dropped, total, f"YOLODataset({path}, split={split!r})")
        self.data_yaml = path
        self.split = split
        super().__init__(records, names, transform, skip_bad_images)
