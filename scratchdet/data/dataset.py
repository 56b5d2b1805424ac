"""What the VOC and COCO readers share: records, image loading, bad-image policy, transforms."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..structures.errors import BadImageError
from ..structures.image import read_image
from ._boxes import clip_and_filter

__all__ = ["Record", "DetectionDataset", "BadImageError"]


@dataclass
class Record:
    """One annotated image. Boxes are pixel (x1, y1, x2, y2), already clipped and non-degenerate."""
    image_path: str
    image_id: object
    boxes: np.ndarray       # float32 [M, 4]
    labels: np.ndarray      # int64 [M], 1..K
    difficult: np.ndarray   # bool [M]
    width: int | None = None   # the annotated size, when the annotation gives one
    height: int | None = None


class DetectionDataset(torch.utils.data.Dataset):
    """Base class: ``ds[i] -> (image, target)``.

    Without a transform, ``image`` is a PIL RGB image and ``target`` holds pixel
    boxes. With a transform (e.g. :class:`scratchdet.data.SSDTransform`) both go
    through ``transform(image, target, index=i)``.

    Bad images: by default a missing or undecodable image raises
    :class:`BadImageError` naming the file. With ``skip_bad_images=True``, images
    missing at construction are left out, and an image that fails to decode at
    load time is replaced by the next good one; both are listed in
    ``self.skipped`` (a list of (path, reason)) with one warning per file. The
    count is per process: DataLoader workers each keep their own list.
    """

    # Box convention for VOC mAP: True where boxes are inclusive pixel indices (VOC), so the
    # devkit's +1 widths apply; False for continuous coordinates (COCO). Read by
    # scratchdet.evaluation.evaluate.pixel_inclusive, the one place evaluation picks it.
    pixel_inclusive = False

    def __init__(self, records, classes, transform=None, skip_bad_images=False):
        self.classes = list(classes)
        self.transform = transform
        self.skip_bad_images = skip_bad_images
        self.skipped: list[tuple[str, str]] = []
        self._cache: list | None = None   # decoded images (uint8 HxWx3), see cache_images
        if skip_bad_images:
            good = []
            for rec in records:
                if os.path.isfile(rec.image_path):
                    good.append(rec)
                else:
                    self._note_skip(rec.image_path, "missing")
            records = good
        self.records = records

    # ---- public helpers -------------------------------------------------
    def __len__(self):
        return len(self.records)

    @property
    def num_classes(self) -> int:
        """Number of object classes K (the model needs K + 1 logits with background)."""
        return len(self.classes)

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to the transform so seeded augmentation differs per epoch."""
        if hasattr(self.transform, "set_epoch"):
            self.transform.set_epoch(epoch)

    def get_annotation(self, index: int) -> dict:
        """The pixel-space target of image ``index`` without loading the image (for evaluation)."""
        rec = self.records[index]
        return {"boxes": torch.from_numpy(rec.boxes.copy()), "labels": torch.from_numpy(rec.labels.copy()),
                "difficult": torch.from_numpy(rec.difficult.copy()), "image_id": rec.image_id}

    def cache_images(self, max_bytes: int = 2 << 30) -> bool:
        """Decode every image once and keep it in memory (uint8), so later epochs skip the JPEG
        decode. Done in the calling process: DataLoader workers started afterwards share the
        decoded pages with it. Nothing is cached when the images would take more than
        ``max_bytes`` (estimated from the first image); returns whether they were cached."""
        if self._cache is not None or not self.records:
            return self._cache is not None
        cache, estimated = [], False
        for rec in self.records:
            try:
                image = self._load_image(rec.image_path)
            except BadImageError as exc:
                if not self.skip_bad_images:
                    raise
                self._note_skip(rec.image_path, str(exc.__cause__ or exc))
                cache.append(None)          # skipped at load time, as without a cache
                continue
            if not estimated:               # the size estimate from the first image that decodes
                if image.width * image.height * 3 * len(self.records) > max_bytes:
                    return False
                estimated = True
            cache.append(np.asarray(image))
        self._cache = cache
        return True

    # ---- loading ----------------------------------------------------------
    def __getitem__(self, index):
        epoch = None
        if isinstance(index, tuple):        # (epoch, index): the epoch travels with the index to any worker
            epoch, index = index
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a data set of {len(self)} images")
        for attempt in range(len(self)):
            position = (index + attempt) % len(self)
            rec = self.records[position]
            try:
                cached = self._cache[position] if self._cache is not None else None
                image = Image.fromarray(cached) if cached is not None else self._load_image(rec.image_path)
                break
            except BadImageError as exc:
                if not self.skip_bad_images:
                    raise
                self._note_skip(rec.image_path, str(exc.__cause__ or exc))
        else:
            raise BadImageError("no image in the data set could be loaded")
        target = self._target(rec, image.width, image.height)
        if self.transform is not None:
            if epoch is not None:
                return self.transform(image, target, index=index, epoch=epoch)
            return self.transform(image, target, index=index)
        return image, target

    def _note_skip(self, path, reason):
        if all(p != path for p, _ in self.skipped):
            self.skipped.append((path, reason))
            warnings.warn(f"skipping bad image {path}: {reason} ({len(self.skipped)} skipped so far)",
                          stacklevel=3)

    @staticmethod
    def _load_image(path) -> Image.Image:
        """The upright 8-bit RGB image (:func:`scratchdet.structures.image.read_image`)."""
        return read_image(path)

    @staticmethod
    def _target(rec: Record, width: int, height: int) -> dict:
        boxes, labels, difficult = rec.boxes, rec.labels, rec.difficult
        if rec.width != width or rec.height != height:
            # The annotated size disagrees with the file: clip again to the real image.
            boxes, keep = clip_and_filter(boxes, width, height)
            if not keep.all():
                warnings.warn(f"{rec.image_path}: image is {width}x{height} but annotated "
                              f"{rec.width}x{rec.height}; dropped {int((~keep).sum())} box(es) outside it")
            boxes, labels, difficult = boxes[keep], labels[keep], difficult[keep]
        return {"boxes": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)).reshape(-1, 4),
                "labels": torch.from_numpy(np.asarray(labels, dtype=np.int64)),
                "difficult": torch.from_numpy(np.asarray(difficult, dtype=bool)),
                "image_id": rec.image_id}
