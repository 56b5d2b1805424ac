"""Builds the train/val data sets a TrainConfig names (VOC, COCO, YOLO).

``data_root`` is read, never written: the one exception is ``synth:DIR``, the user's request to
generate the synthetic data set into DIR (new or empty; a DIR holding a finished one is reused).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..data import COCODataset, SSDTransform, VOCDataset, YOLODataset, synth
from ..data.coco import load_coco_json
from ..data.yolo import read_data_yaml
from ..models.registry import resolve_config
from ..structures.errors import DataError
from .config import TrainConfig
from .distributed import DistInfo, barrier

SYNTH_PREFIX = "synth:"
EXPECTED = ("a VOC-layout folder (Annotations/ JPEGImages/ ImageSets/Main/<split>.txt), a YOLO data.yaml, "
            "a COCO instances json (or a folder holding annotations/instances_<split>.json), "
            "or synth:DIR to generate the synthetic data set into DIR")
_SPLIT_FIX = "set the splits with --set train_split=... / --set val_split=... (val_split= empty: no validation)"


@dataclass(frozen=True)
class DataSource:
    """What ``cfg.data_root`` names: the reader (``kind``), its root(s), and whether it is the
    synthetic data set the user asked to generate (``synth:DIR``)."""
    kind: str                  # "voc", "coco" or "yolo"
    roots: tuple[str, ...]     # one root, or several VOC roots joined (07+12); () for COCO by coco_*_json
    synthetic: bool = False

    @property
    def root(self) -> str:
        return self.roots[0] if self.roots else ""


def model_config(cfg: TrainConfig) -> dict:
    """The resolved builder arguments of the model ``cfg`` trains (its input spec included)."""
    return resolve_config(cfg.model, **cfg.model_overrides)


def ensure_synthetic(root: str, num_train: int = 1200, num_val: int = 300, seed: int = 0,
                     image_size: int | None = None, dist: DistInfo | None = None) -> str:
    """Generate the synthetic data set into `root` once (rank 0): a new or empty folder gets it, one
    that holds a finished synthetic set (its synth.json) is used as it is, anything else is a
    :class:`DataError` (this never writes into other data)."""
    done = check_synth_target(root)   # every rank checks before rank 0 writes: all of them fail alike
    if dist is not None:
        barrier(dist)
    if not done and (dist is None or dist.is_main):
        kwargs = {} if image_size is None else {"image_size": image_size}
        synth.generate(root, num_train, num_val, seed, **kwargs)
    if dist is not None:
        barrier(dist)
    return root


def check_synth_target(root: str) -> bool:
    """True if `root` holds a finished synthetic data set, False if it is new or empty (to generate
    into); DataError for anything else, which is never written into."""
    if os.path.isfile(os.path.join(root, "synth.json")):
        return True
    if os.path.exists(root) and not os.path.isdir(root):
        raise DataError(f"{root}: not a folder; the synthetic data set is generated into a new or empty folder")
    if os.path.isdir(root) and os.listdir(root):
        raise DataError(f"{root}: the folder is not empty and holds no finished synthetic data set (no synth.json); "
                        "the synthetic data set is generated only into a new or empty folder")
    return False


def voc_splits(root: str) -> list[str]:
    """The split lists a VOC folder has (ImageSets/Main/<split>.txt; not the per-class ones)."""
    main = os.path.join(root, "ImageSets", "Main")
    if not os.path.isdir(main):
        return []
    return sorted(f[:-4] for f in os.listdir(main) if f.endswith(".txt") and "_" not in f)


def _folder_kind(root: str) -> str | None:
    """The layout a folder holds: VOC first (the synthetic set is also COCO), then YOLO, then COCO."""
    if any(os.path.isdir(os.path.join(root, sub)) for sub in ("Annotations", "ImageSets", "JPEGImages")):
        return "voc"
    if any(os.path.isfile(os.path.join(root, name)) for name in ("data.yaml", "data.yml")):
        return "yolo"
    annotations = os.path.join(root, "annotations")
    if os.path.isdir(annotations) and any(f.startswith("instances_") and f.endswith(".json")
                                          for f in os.listdir(annotations)):
        return "coco"
    return None


def _not_data(root: str, why: str) -> DataError:
    return DataError(f"--data {root}: {why}; expected {EXPECTED}")


def resolve_data(cfg: TrainConfig) -> DataSource:
    """Which reader ``cfg`` asks for and on what, checked on disk without writing anything:
    :class:`DataError` (one line naming what was expected) for a missing path, a file of no known
    format, an empty folder, a folder of no known layout, or a VOC folder without a split asked for."""
    data_root = cfg.data_root.strip()
    if data_root.startswith(SYNTH_PREFIX):
        root = data_root[len(SYNTH_PREFIX):]
        if not root:
            raise DataError("--data synth:DIR needs a folder to generate the synthetic data set into")
        source = DataSource("voc", (root,), synthetic=True)
        if check_synth_target(root):   # generated before: read with the splits it has
            check_splits(source, cfg)
        return source
    if not data_root:
        if cfg.dataset in ("auto", "coco") and cfg.coco_train_json:
            return DataSource("coco", ())
        raise DataError(f"no data given: pass --data DATA, where DATA is {EXPECTED}")
    roots = tuple(r.strip() for r in data_root.split(",") if r.strip())
    for root in roots:
        if not os.path.exists(root):
            raise _not_data(root, "not found")
    if len(roots) > 1:   # VOC 07+12
        if cfg.dataset not in ("auto", "voc"):
            raise DataError(f"--data {data_root}: only VOC folders can be joined with commas, not {cfg.dataset}")
        for root in roots:
            _check_voc_folder(root)
        source = DataSource("voc", roots)
    else:
        source = DataSource(_kind_of(roots[0], cfg.dataset), roots)
    check_splits(source, cfg)
    return source


def _kind_of(root: str, dataset: str) -> str:
    lower = root.lower()
    if lower.endswith((".yaml", ".yml")):   # the extension says it whatever `dataset` says
        return "yolo"
    if lower.endswith(".json"):
        return "coco"
    if not os.path.isdir(root):
        raise _not_data(root, "a file of no known format")
    if dataset == "voc":
        _check_voc_folder(root)
    if dataset != "auto":
        return dataset
    kind = _folder_kind(root)
    if kind is None:
        raise _not_data(root, "the folder is empty" if not os.listdir(root) else "no known data layout in the folder")
    return kind


def _check_voc_folder(root: str) -> None:
    if not os.path.isdir(root):
        raise _not_data(root, "not a folder")
    if _folder_kind(root) != "voc":
        raise _not_data(root, "the folder is empty" if not os.listdir(root) else "not a VOC-layout folder")


def check_splits(source: DataSource, cfg: TrainConfig) -> None:
    """A VOC source must have the train split in every root and the val split (unless empty) in the
    first; DataError naming the splits it has and the fix otherwise."""
    if source.kind != "voc":
        return
    wanted = [(root, "train_split", cfg.train_split) for root in source.roots]
    if cfg.val_split:
        wanted.append((source.root, "val_split", cfg.val_split))
    for root, option, split in wanted:
        if not split or not os.path.isfile(os.path.join(root, "ImageSets", "Main", f"{split}.txt")):
            have = ", ".join(voc_splits(root)) or "none"
            raise DataError(f"{option} {split!r}: the VOC folder {root} has no ImageSets/Main/{split}.txt; "
                            f"its splits: {have}; {_SPLIT_FIX}")


def _coco_image_dir(json_path: str, candidates: list[str]) -> str:
    """The first candidate folder that holds the json's first image."""
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


def build_transforms(cfg: TrainConfig, spec) -> tuple[SSDTransform, SSDTransform]:
    """The training (augmenting, seeded) and evaluation transforms for a model config ``spec``."""
    try:
        tiling = {"tile": cfg.train_tile} if cfg.train_tile else {}  # native-resolution crops (train_tile)
        train_tf = SSDTransform.from_config(spec, train=True, seed=cfg.seed, **tiling, **cfg.augment)
    except TypeError as exc:
        raise ValueError(f"bad augment option: {exc}") from None
    return train_tf, SSDTransform.from_config(spec, train=False)


def build_datasets(cfg: TrainConfig, dist: DistInfo | None = None):
    """(train_set, val_set, class_names); train has the SSD augmentation, val the eval transform.
    The validation set uses the training set's class list (label i is the same class in both);
    it is None when the data has no validation split (or ``val_split`` is empty)."""
    source = resolve_data(cfg)
    if source.synthetic:
        ensure_synthetic(source.root, seed=cfg.seed, dist=dist)
        check_splits(source, cfg)
    train_tf, val_tf = build_transforms(cfg, model_config(cfg))
    classes = [c.strip() for c in cfg.classes.split(",") if c.strip()] or None
    skip = cfg.skip_bad_images
    if source.kind == "voc":
        roots = list(source.roots) if len(source.roots) > 1 else source.root
        train = VOCDataset(roots, split=cfg.train_split, classes=classes, transform=train_tf, skip_bad_images=skip)
        val = VOCDataset(source.root, split=cfg.val_split, classes=train.classes, transform=val_tf,
                         skip_bad_images=skip) if cfg.val_split else None
        return train, val, list(train.classes)
    if source.kind == "yolo":
        if classes:
            raise ValueError("classes: a YOLO data set takes its classes from data.yaml's names")
        train = YOLODataset(source.root, split=cfg.train_split, transform=train_tf, skip_bad_images=skip)
        has_val = train.split != cfg.val_split and _yolo_has_split(train.data_yaml, cfg.val_split)
        val = YOLODataset(source.root, split=cfg.val_split, transform=val_tf,
                          skip_bad_images=skip) if has_val else None
        return train, val, list(train.classes)
    train_paths = coco_paths(cfg, "train")
    if train_paths is None:
        raise FileNotFoundError("no COCO training annotations: pass --data instances_train.json (or a folder with "
                                "annotations/) or set coco_train_json / coco_train_images")
    train = COCODataset(*train_paths, transform=train_tf, classes=classes, skip_bad_images=skip)
    val_paths = coco_paths(cfg, "val")
    val = COCODataset(*val_paths, transform=val_tf, classes=train.classes, skip_bad_images=skip) if val_paths else None
    return train, val, list(train.classes)


def _yolo_has_split(data_yaml: str, split: str) -> bool:
    return bool(split) and bool(read_data_yaml(data_yaml).get(split))
