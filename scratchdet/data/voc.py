"""Pascal VOC reader.

Layout under each root: ``JPEGImages/<id>.jpg``, ``Annotations/<id>.xml`` and
``ImageSets/Main/<split>.txt``. Several roots can be joined (VOC07 + VOC12).

Box convention: VOC stores 1-based inclusive pixel indices. The reader returns
0-based inclusive indices, ``(xmin - 1, ymin - 1, xmax - 1, ymax - 1)``, as
ssd.pytorch and Detectron do. Evaluate such boxes with
``voc_eval(..., pixel_inclusive=True)`` (the default): widths are then
``x2 - x1 + 1`` as in the VOC devkit, and its numbers are reproduced exactly.
"""
from __future__ import annotations

import os
from collections import Counter

import numpy as np

from ..structures.errors import DataError
from ._boxes import clip_and_filter, usable_side, warn_dropped
from ._text import read_lines, short_repr
from ._xml import parse_xml
from .dataset import DetectionDataset, Record

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
CLASSES_FILE = "classes.txt"  # optional, one class name a line; the synthetic data set writes one


BOX_TAGS = ("xmin", "ymin", "xmax", "ymax")


def _text(node, tag, where, default=None) -> str:
    """The stripped text of ``node``'s child ``tag``; a missing or blank one is ``default`` or an error."""
    child = node.find(tag)
    text = child.text.strip() if child is not None and child.text is not None else ""
    if not text:
        if default is not None:
            return default
        raise DataError(f"{where}: <{node.tag}> has no <{tag}>")
    return text


def _number(node, tag, where) -> float:
    value = _text(node, tag, where)
    try:
        return float(value)     # "nan" and "inf" parse: such boxes are dropped later, counted in the warning
    except ValueError:
        raise DataError(f"{where}: <{tag}> is not a number: {short_repr(value)}") from None


def _image_size(root, path):
    """The annotated (width, height), or (None, None) when absent or unusable (some VOC12 files say
    0x0; NaN, negative or absurd sizes alike): the image file's size is trusted then."""
    size = root.find("size")
    if size is None or size.find("width") is None or size.find("height") is None:
        return None, None
    width, height = _number(size, "width", path), _number(size, "height", path)
    if not (usable_side(width) and usable_side(height)):
        return None, None
    return int(width), int(height)


def parse_voc_xml(path: str, class_to_label: dict, hint: str = ""):
    """Read one annotation file. Returns (boxes, labels, difficult, width, height), boxes unclipped
    (float64, possibly not finite). Errors are DataErrors naming the file and the <object>.

    An empty file or one without <object> is an image with no objects.
    """
    with open(path, "rb") as f:
        data = f.read()
    empty = (np.zeros((0, 4), np.float64), np.zeros(0, np.int64), np.zeros(0, bool), None, None)
    if not data.strip():
        return empty
    root = parse_xml(data, path)
    width, height = _image_size(root, path)
    boxes, labels, difficult = [], [], []
    for k, obj in enumerate(root.iter("object"), start=1):
        where = f"{path}: <object> #{k}"
        name = _text(obj, "name", where)
        if name not in class_to_label:
            raise DataError(f"{path}: unknown class {short_repr(name)}; known classes: {', '.join(class_to_label)}"
                            + (f"; {hint}" if hint else "") + f" (<object> #{k})")
        bb = obj.find("bndbox")
        if bb is None:
            raise DataError(f"{where}: {short_repr(name)} has no <bndbox>")
        boxes.append([_number(bb, t, where) - 1.0 for t in BOX_TAGS])
        labels.append(class_to_label[name])
        difficult.append(_text(obj, "difficult", where, default="0") not in ("0", "false", "False"))
    if not boxes:
        return empty[:3] + (width, height)
    return (np.asarray(boxes, np.float64), np.asarray(labels, np.int64), np.asarray(difficult, bool),
            width, height)


def _read_classes_file(roots):
    for root in roots:
        path = os.path.join(root, CLASSES_FILE)
        if os.path.isfile(path):
            names = [line.strip() for line in read_lines(path) if line.strip()]
            duplicates = sorted(n for n, count in Counter(names).items() if count > 1)
            if duplicates:
                raise DataError(f"{path}: duplicate class names: {', '.join(duplicates)} (one class a line, each once)")
            return names
    return None


def discover_classes(xml_paths) -> list[str]:
    """The class names the annotation files use: the 20 VOC classes (in VOC order) when they are
    all VOC names, else every name found, sorted."""
    names = set()
    for path in xml_paths:
        with open(path, "rb") as f:
            data = f.read()
        if data.strip():
            root = parse_xml(data, path)
            names.update(_text(obj, "name", f"{path}: <object> #{k}")
                         for k, obj in enumerate(root.iter("object"), start=1))
    if names <= set(VOC_CLASSES):
        return list(VOC_CLASSES)
    return sorted(names)


class VOCDataset(DetectionDataset):
    """Pascal VOC detection data.

    Args:
        root: a VOC root (the folder holding JPEGImages, Annotations, ImageSets),
            or a list of them (e.g. VOC2007 and VOC2012 for "07+12").
        split: the ImageSets/Main/<split>.txt list to read, e.g. "trainval", "test", "train", "val".
        classes: class names in label order (label i is ``classes[i-1]``). Default:
            the root's ``classes.txt`` when it has one; else the 20 VOC classes when every
            name in the split's annotations is a VOC class; else every name found there,
            sorted (printed once, so the order is on record).
        transform: called as ``transform(image, target, index=i)``.
        skip_bad_images: see :class:`DetectionDataset`.
        image_ext: image file extension.

    Boxes are clipped to the image; degenerate or non-finite boxes are dropped with one warning
    that counts them. Unknown class names, missing fields, coordinates that are not numbers and
    malformed XML raise a :class:`DataError` naming the file (and the <object>).
    """

    pixel_inclusive = True      # 0-based inclusive pixel indices: the devkit's +1 widths apply

    def __init__(self, root, split="trainval", classes=None, transform=None, skip_bad_images=False,
                 image_ext=".jpg"):
        roots = [root] if isinstance(root, (str, os.PathLike)) else list(root)
        if not roots:
            raise ValueError("VOCDataset: no root given")
        roots = [os.fspath(r) for r in roots]
        items = []
        for r in roots:
            for image_id in self._split_ids(r, split):
                xml_path = os.path.join(r, "Annotations", image_id + ".xml")
                if not os.path.isfile(xml_path):
                    raise FileNotFoundError(f"annotation file not found: {xml_path}")
                items.append((r, image_id, xml_path))
        given = classes is not None
        if classes is None:
            classes = _read_classes_file(roots)
        if classes is None:
            classes = discover_classes(p for _, _, p in items)
            if list(classes) != list(VOC_CLASSES):
                print(f"VOCDataset({', '.join(roots)}): no {CLASSES_FILE}; the {split!r} annotations name "
                      f"{len(classes)} classes, labels 1..{len(classes)} in this order: {', '.join(classes)}")
        classes = list(classes)
        if len(set(classes)) != len(classes):
            raise ValueError(f"VOCDataset: duplicate class names in {classes}")
        class_to_label = {name: i + 1 for i, name in enumerate(classes)}
        hint = ("these are the classes given (e.g. the model's); evaluate on data with these classes, or "
                "retrain with the class added (--set classes=...)" if given else
                f"add it to {CLASSES_FILE} in the data folder (one class a line, in label order)")
        records, dropped, total = [], 0, 0
        for r, image_id, xml_path in items:
            boxes, labels, difficult, width, height = parse_voc_xml(xml_path, class_to_label, hint)
            # no usable annotated size: clip to [0, inf) now, to the image when it is loaded
            boxes, keep = clip_and_filter(boxes, width or np.inf, height or np.inf)
            dropped += int((~keep).sum())
            total += len(keep)
            records.append(Record(os.path.join(r, "JPEGImages", image_id + image_ext), image_id,
                                  boxes[keep], labels[keep], difficult[keep], width, height))
        warn_dropped(dropped, total, f"VOCDataset({', '.join(roots)}, split={split!r})")
        self.roots = roots
        self.split = split
        super().__init__(records, classes, transform, skip_bad_images)

    @staticmethod
    def _split_ids(root, split):
        path = os.path.join(root, "ImageSets", "Main", f"{split}.txt")
        if not os.path.isfile(path):
            main = os.path.join(root, "ImageSets", "Main")
            found = sorted(f[:-4] for f in os.listdir(main) if f.endswith(".txt") and "_" not in f) \
                if os.path.isdir(main) else []
            raise FileNotFoundError(f"split file not found: {path}; available splits: {found or 'none'}")
        return [line.split()[0] for line in read_lines(path) if line.strip()]
