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

import numpy as np

from ._boxes import clip_and_filter, warn_dropped
from ._xml import parse_xml
from .dataset import DetectionDataset, Record

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
CLASSES_FILE = "classes.txt"  # optional, one class name a line; the synthetic data set writes one


def _text(node, tag, source, default=None):
    child = node.find(tag)
    if child is None or child.text is None:
        if default is not None:
            return default
        raise ValueError(f"{source}: <{node.tag}> has no <{tag}>")
    return child.text.strip()


def _number(node, tag, source):
    value = _text(node, tag, source)
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{source}: <{tag}> is not a number: {value!r}") from None


def parse_voc_xml(path: str, class_to_label: dict, hint: str = ""):
    """Read one annotation file. Returns (boxes, labels, difficult, width, height), boxes unclipped.

    An empty file or one without <object> is an image with no objects.
    """
    with open(path, "rb") as f:
        data = f.read()
    empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, bool), None, None)
    if not data.strip():
        return empty
    root = parse_xml(data, path)
    size = root.find("size")
    width = height = None
    if size is not None and size.find("width") is not None and size.find("height") is not None:
        width, height = int(_number(size, "width", path)), int(_number(size, "height", path))
        if width <= 0 or height <= 0:
            width = height = None  # some VOC12 files say 0x0: trust the image instead
    boxes, labels, difficult = [], [], []
    for obj in root.iter("object"):
        name = _text(obj, "name", path)
        if name not in class_to_label:
            raise ValueError(f"{path}: unknown class {name!r}; known classes: {', '.join(class_to_label)}"
                             + (f"; {hint}" if hint else ""))
        bb = obj.find("bndbox")
        if bb is None:
            raise ValueError(f"{path}: <object> {name!r} has no <bndbox>")
        boxes.append([_number(bb, t, path) - 1.0 for t in ("xmin", "ymin", "xmax", "ymax")])
        labels.append(class_to_label[name])
        difficult.append(_text(obj, "difficult", path, default="0") not in ("0", "false", "False"))
    if not boxes:
        return empty[:3] + (width, height)
    return (np.asarray(boxes, np.float32), np.asarray(labels, np.int64), np.asarray(difficult, bool),
            width, height)


def _read_classes_file(roots):
    for root in roots:
        path = os.path.join(root, CLASSES_FILE)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                return [line.strip() for line in f if line.strip()]
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
            names.update(_text(obj, "name", path) for obj in root.iter("object"))
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

    Boxes are clipped to the image; degenerate boxes are dropped with one warning
    that counts them. Unknown class names and malformed XML raise errors naming the file.
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
            keep = np.ones(len(boxes), bool)
            if width is not None:
                boxes, keep = clip_and_filter(boxes, width, height)
            else:
                _, keep = clip_and_filter(boxes, np.inf, np.inf)
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
        with open(path, encoding="utf-8") as f:
            return [line.split()[0] for line in f if line.strip()]
