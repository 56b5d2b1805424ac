"""Builds the train/val data sets a TrainConfig names (VOC, COCO, or generated synthetic data)."""
from __future__ import annotations

import os

from .config import TrainConfig
from .distributed import DistInfo, barrier


def model_config(cfg: TrainConfig) -> dict:
    """The resolved builder arguments of the model ``cfg`` trains (its input spec included)."""
    from ..models.registry import resolve_config

    return resolve_config(cfg.model, **cfg.model_overrides)


def ensure_synthetic(root: str, num_train: int = 1200, num_val: int = 300, seed: int = 0,
                     image_size: int | None = None, dist: DistInfo | None = None) -> str:
    """Generate the synthetic data set into `root` once (rank 0), unless it is already there."""
    from ..data import synth

    done = os.path.join(root, "ImageSets", "Main", "val.txt")
    if not os.path.exists(done) and (dist is None or dist.is_main):
        kwargs = {} if image_size is None else {"image_size": image_size}
        synth.generate(root, num_train, num_val, seed, **kwargs)
    if dist is not None:
        barrier(dist)
    return root


def dataset_kind(cfg: TrainConfig) -> str:
    """The reader ``cfg`` asks for: a ``.yaml`` data root is YOLO, a ``.json`` one COCO; else ``cfg.dataset``."""
    root = cfg.data_root.lower()
    if root.endswith((".yaml", ".yml")):
        return "yolo"
    if root.endswith(".json"):
        return "coco"
    return cfg.dataset


def _coco_image_dir(json_path: str, candidates: list[str]) -> str:
    """The first candidate folder that holds the json's first image."""
    from ..data.coco import load_coco_json

    images = load_coco_json(json_path)["images"]
    first = images[0].get("file_name", "") if images and isinstance(images[0], dict) else ""
    for folder in candidates:
        if os.path.isdir(folder) and (not first or os.path.exists(os.path.join(folder, first))):
            return folder
    raise FileNotFoundError(f"cannot find the images of {json_path} (looked in {', '.join(candidates)}); "
                            "set coco_train_images / coco_val_images")


def coco_paths(cfg: TrainConfig, which: str) -> tuple[str, str] | None:
    """``(image folder, instances json)`` of the "train" or "val" split: from coco_<which>_json /
    coco_<which>_images, else from the data root (a json, or a folder with
    ``annotations/instances_<split>.json`` and ``images/<split>/``, ``<split>/``, ``images/`` or
    ``JPEGImages/``). None if that split has no annotations."""
    split = getattr(cfg, f"{which}_split")
    json_path = getattr(cfg, f"coco_{which}_json")
    images = getattr(cfg, f"coco_{which}_images")
    root = cfg.data_root
    if not json_path and root:
        if root.lower().endswith(".json"):
            json_path = root if which == "train" else ""
            if not json_path:   # instances_train2017.json -> instances_val2017.json beside it
                guess = os.path.join(os.path.dirname(root),
                                     os.path.basename(root).replace(cfg.train_split, cfg.val_split))
                json_path = guess if guess != root and os.path.isfile(guess) else ""
        else:
            guess = os.path.join(root, "annotations", f"instances_{split}.json")
            json_path = guess if os.path.isfile(guess) or which == "train" else ""
    if not json_path:
        return None
    if not os.path.isfile(json_path):
        raise FileNotFoundError(f"COCO annotation file not found: {json_path}")
    if not images:
        base = root if root and os.path.isdir(root) else os.path.dirname(os.path.dirname(os.path.abspath(json_path)))
        images = _coco_image_dir(json_path, [os.path.join(base, "images", split), os.path.join(base, split),
                                             os.path.join(base, "images"), os.path.join(base, "JPEGImages")])
    elif not os.path.isdir(images):
        raise FileNotFoundError(f"COCO image folder not found: {images}")
    return images, json_path


def build_datasets(cfg: TrainConfig, dist: DistInfo | None = None):
    """(train_set, val_set, class_names); train has the SSD augmentation, val the eval transform.
    The validation set uses the training set's class list (label i is the same class in both)."""
    from ..data import COCODataset, SSDTransform, VOCDataset, YOLODataset

    spec = model_config(cfg)
    try:
        train_tf = SSDTransform.from_config(spec, train=True, seed=cfg.seed, **cfg.augment)
    except TypeError as exc:
        raise ValueError(f"bad augment option: {exc}") from None
    val_tf = SSDTransform.from_config(spec, train=False)
    classes = [c.strip() for c in cfg.classes.split(",") if c.strip()] or None
    kind = dataset_kind(cfg)
    if kind in ("voc", "synth"):
        if not cfg.data_root:
            raise ValueError("data_root is not set: pass --data DIR")
        if kind == "synth":
            ensure_synthetic(cfg.data_root, seed=cfg.seed, dist=dist)
        elif not os.path.isdir(cfg.data_root.split(",")[0]):
            raise FileNotFoundError(f"data folder not found: {cfg.data_root}")
        roots = cfg.data_root.split(",") if "," in cfg.data_root else cfg.data_root
        train = VOCDataset(roots, split=cfg.train_split, classes=classes, transform=train_tf)
        val = VOCDataset(roots if isinstance(roots, str) else roots[0], split=cfg.val_split,
                         classes=train.classes, transform=val_tf)
        return train, val, list(train.classes)
    if kind == "yolo":
        if classes:
            raise ValueError("classes: a YOLO data set takes its classes from data.yaml's names")
        if not cfg.data_root:
            raise ValueError("data_root is not set: pass --data DIR/data.yaml")
        train = YOLODataset(cfg.data_root, split=cfg.train_split, transform=train_tf)
        has_val = train.split != cfg.val_split and _yolo_has_split(train.data_yaml, cfg.val_split)
        val = YOLODataset(cfg.data_root, split=cfg.val_split, transform=val_tf) if has_val else None
        return train, val, list(train.classes)
    train_paths = coco_paths(cfg, "train")
    if train_paths is None:
        raise FileNotFoundError("no COCO training annotations: pass --data instances_train.json (or a folder with "
                                "annotations/) or set coco_train_json / coco_train_images")
    train = COCODataset(*train_paths, transform=train_tf, classes=classes)
    val_paths = coco_paths(cfg, "val")
    val = COCODataset(*val_paths, transform=val_tf, classes=train.classes) if val_paths else None
    return train, val, list(train.classes)


def _yolo_has_split(data_yaml: str, split: str) -> bool:
    from ..data.yolo import read_data_yaml

    return bool(read_data_yaml(data_yaml).get(split))
