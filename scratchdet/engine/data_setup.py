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


def build_datasets(cfg: TrainConfig, dist: DistInfo | None = None):
    """(train_set, val_set, class_names); train has the SSD augmentation, val the eval transform."""
    from ..data import COCODataset, SSDTransform, VOCDataset

    spec = model_config(cfg)
    try:
        train_tf = SSDTransform.from_config(spec, train=True, seed=cfg.seed, **cfg.augment)
    except TypeError as exc:
        raise ValueError(f"bad augment option: {exc}") from None
    val_tf = SSDTransform.from_config(spec, train=False)
    if cfg.dataset in ("voc", "synth"):
        if not cfg.data_root:
            raise ValueError("data_root is not set: pass --data DIR")
        if cfg.dataset == "synth":
            ensure_synthetic(cfg.data_root, seed=cfg.seed, dist=dist)
        elif not os.path.isdir(cfg.data_root.split(",")[0]):
            raise FileNotFoundError(f"data folder not found: {cfg.data_root}")
        roots = cfg.data_root.split(",") if "," in cfg.data_root else cfg.data_root
        train = VOCDataset(roots, split=cfg.train_split, transform=train_tf)
        val = VOCDataset(roots if isinstance(roots, str) else roots[0], split=cfg.val_split, transform=val_tf)
        return train, val, list(train.classes)
    for path in (cfg.coco_train_images, cfg.coco_train_json):
        if not path or not os.path.exists(path):
            raise FileNotFoundError(f"COCO path not found: {path!r} (set coco_train_images / coco_train_json)")
    train = COCODataset(cfg.coco_train_images, cfg.coco_train_json, transform=train_tf)
    val = None
    if cfg.coco_val_json:
        val = COCODataset(cfg.coco_val_images, cfg.coco_val_json, transform=val_tf)
    return train, val, list(train.classes)
