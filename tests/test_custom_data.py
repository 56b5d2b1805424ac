"""Custom data without ceremony: VOC class discovery, COCO json by path, YOLO txt; saved with the model."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import scratchdet
from scratchdet.data import COCODataset, VOCDataset, YOLODataset
from scratchdet.engine.config import make_config
from scratchdet.engine.data_setup import build_datasets, ensure_synthetic, resolve_data
from scratchdet.engine.trainer import Trainer
from scratchdet.evaluation import coco_eval, detections_to_coco
from scratchdet.structures.errors import DataError
from test_datasets import ann, make_voc, obj

TINY = {"width": 8, "extra_channels": 16, "image_size": 64}


def tiny_run(data_root, out_dir, **overrides):
    return make_config("demo", {"data_root": data_root, "out_dir": str(out_dir), "batch_size": 2, "max_iters": 2,
                                "warmup_iters": 0, "workers": 0, "ckpt_every": 0, "model_overrides": TINY,
                                **overrides})


# ------------------------------------------------------------------ VOC: class discovery
def shapes_voc(root):
    entries = {f"im{i}": ann(obj(["cross", "blob", "arrow"][i % 3], 2, 2, 20, 20), obj("blob", 5, 5, 30, 25))
               for i in range(6)}
    root = make_voc(root, entries)
    with open(os.path.join(root, "ImageSets", "Main", "val.txt"), "w") as f:
        f.write("im0\nim1\n")
    return root


def test_voc_classes_are_discovered_sorted_printed_and_saved_with_the_model(tmp_path, capsys):
    root = shapes_voc(tmp_path / "voc")
    ds = VOCDataset(root, split="train")
    assert ds.classes == ["arrow", "blob", "cross"]
    assert "no classes.txt; the 'train' annotations name 3 classes, labels 1..3 in this order: arrow, blob, cross" \
        in capsys.readouterr().out
    assert ds[0][1]["labels"].tolist() == [3, 2]
    # VOC names only: the standard 20-class order, nothing printed
    voc = make_voc(tmp_path / "voc20", {"a": ann(obj("dog", 1, 1, 5, 5))})
    assert VOCDataset(voc, split="train").classes[11] == "dog" and capsys.readouterr().out == ""

    trainer = Trainer(tiny_run(root, tmp_path / "run", val_split="val"), progress=False)
    assert trainer.classes == ["arrow", "blob", "cross"] and trainer.val_set.classes == trainer.classes
    trainer.train()
    model = scratchdet.load(str(tmp_path / "run" / "model_final.pt"))
    assert model.class_names == ["arrow", "blob", "cross"] and model.num_classes == 4

    chosen = Trainer(tiny_run(root, tmp_path / "run2", val_split="val", classes="cross,blob,arrow"), progress=False)
    assert chosen.classes == ["cross", "blob", "arrow"] and chosen.train_set[0][1]["labels"].tolist()[:1] in ([1], [])


def test_unknown_class_at_evaluation_names_the_file_and_the_fix(tmp_path):
    root = shapes_voc(tmp_path / "voc")
    with open(os.path.join(root, "Annotations", "im1.xml"), "w") as f:
        f.write(ann(obj("zebra", 1, 1, 9, 9)))
    with pytest.raises(ValueError, match=r"im1\.xml: unknown class 'zebra'; known classes: arrow, blob, cross; "
                                         r"these are the classes given \(e\.g\. the model's\)"):
        VOCDataset(root, split="val", classes=["arrow", "blob", "cross"])
    with open(os.path.join(root, "classes.txt"), "w") as f:
        f.write("arrow\nblob\n")
    with pytest.raises(ValueError, match=r"unknown class 'cross'.*add it to classes.txt in the data folder"):
        VOCDataset(root, split="train")


# ------------------------------------------------------------------ COCO: non-contiguous ids, by path
def coco_folder(root, cat_ids=(90, 3, 17)):
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    os.makedirs(os.path.join(root, "images", "train"), exist_ok=True)
    images, anns = [], []
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.new("RGB", (60, 40), (10 * i, 100, 50)).save(os.path.join(root, "images", "train", f"{i}.jpg"))
        images.append({"id": 100 + i, "file_name": f"{i}.jpg", "width": 60, "height": 40})
        for j in range(2):
            x, y = rng.uniform(0, 30), rng.uniform(0, 20)
            anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": int(cat_ids[(i + j) % 3]),
                         "bbox": [x, y, 15.0, 12.0], "area": 180.0, "iscrowd": 0})
    cats = [{"id": int(c), "name": n} for c, n in zip(cat_ids, ("zebra", "apple", "kite"))]
    path = os.path.join(root, "annotations", "instances_train.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": cats}, f)
    return str(root), path


def test_coco_category_ids_map_to_contiguous_labels_and_back_to_coco_ap(tmp_path):
    root, path = coco_folder(tmp_path / "coco")
    ds = COCODataset(os.path.join(root, "images", "train"), path)
    assert ds.cat_ids == [3, 17, 90] and ds.classes == ["apple", "kite", "zebra"]
    assert ds.label_to_cat_id == {1: 3, 2: 17, 3: 90}
    # hand-made detections: every GT found (shifted a little), one wrong class, one false positive
    dets, image_ids = [], []
    for i in range(len(ds)):
        a = ds.get_annotation(i)
        boxes = a["boxes"] + torch.tensor([1.0, 0.5, 1.0, 0.5])
        labels = a["labels"].clone()
        if i == 0:
            labels[0] = labels[0] % 3 + 1
        boxes = torch.cat([boxes, torch.tensor([[0.0, 0.0, 5.0, 5.0]])])
        labels = torch.cat([labels, torch.tensor([1])])
        dets.append({"boxes": boxes, "scores": torch.linspace(0.9, 0.3, len(labels)), "labels": labels})
        image_ids.append(a["image_id"])
    results = detections_to_coco(dets, image_ids, ds.label_to_cat_id)
    assert {r["category_id"] for r in results} <= {3, 17, 90}
    ours = coco_eval(path, results)

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    gt = COCO(path)
    ev = COCOeval(gt, gt.loadRes(results), "bbox")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ours["AP"] == pytest.approx(ev.stats[0]) and ours["AP50"] == pytest.approx(ev.stats[1])
    assert 0.2 < ours["AP50"] < 1.0


def test_train_takes_a_coco_json_or_a_folder_with_annotations(tmp_path):
    root, path = coco_folder(tmp_path / "coco")
    for data_root in (path, root):
        overrides = {} if data_root.endswith(".json") else {"dataset": "coco"}
        train, val, classes = build_datasets(tiny_run(data_root, tmp_path / "run", **overrides))
        assert isinstance(train, COCODataset) and classes == ["apple", "kite", "zebra"] and val is None
        assert len(train) == 4 and train.records[0].image_path.endswith(os.path.join("images", "train", "0.jpg"))
    with pytest.raises(FileNotFoundError, match=r"COCO annotation file not found: .*annotations/instances_train\.json"):
        build_datasets(tiny_run(str(tmp_path), tmp_path / "run", dataset="coco"))


# ------------------------------------------------------------------ YOLO txt
def yolo_folder(root, labels: dict, names=("car", "person"), yaml_text=None):
    for split in ("train", "val"):
        os.makedirs(os.path.join(root, "images", split), exist_ok=True)
        os.makedirs(os.path.join(root, "labels", split), exist_ok=True)
    for rel, text in labels.items():
        split, stem = rel.split("/")
        Image.new("RGB", (100, 50), (0, 0, 0)).save(os.path.join(root, "images", split, stem + ".jpg"))
        if text is not None:
            with open(os.path.join(root, "labels", split, stem + ".txt"), "w") as f:
                f.write(text)
    yaml_text = yaml_text or ("path: .\ntrain: images/train\nval: images/val\nnames:\n"
                              + "".join(f"  {i}: {n}\n" for i, n in enumerate(names)))
    with open(os.path.join(root, "data.yaml"), "w") as f:
        f.write(yaml_text)
    return os.path.join(str(root), "data.yaml")


def test_yolo_reads_boxes_polygons_empty_and_missing_label_files(tmp_path):
    data = yolo_folder(tmp_path / "y", {
        "train/a": "0 0.5 0.5 0.2 0.4\n1 0.1 0.1 0.4 0.4\n",        # the second is cut by the border
        "train/b": "",                                             # an empty label file: no objects
        "train/c": None,                                           # no label file: no objects
        "train/d": "1 0.2 0.2 0.6 0.2 0.6 0.8\n0 0.9 0.5 0.0 0.3\n",  # a polygon, and a zero-width box
        "val/e": "1 0.5 0.5 1 1\n",
    })
    with pytest.warns(UserWarning, match="dropped 1 degenerate box"):
        ds = YOLODataset(data, split="train")
    assert ds.classes == ["car", "person"] and len(ds) == 4 and not ds.pixel_inclusive
    a = ds.get_annotation(0)
    assert a["labels"].tolist() == [1, 2]
    torch.testing.assert_close(a["boxes"], torch.tensor([[40.0, 15.0, 60.0, 35.0], [0.0, 0.0, 30.0, 15.0]]))
    assert len(ds.get_annotation(1)["labels"]) == 0 and len(ds.get_annotation(2)["labels"]) == 0
    d = ds.get_annotation(3)
    assert d["labels"].tolist() == [2]
    torch.testing.assert_close(d["boxes"], torch.tensor([[20.0, 10.0, 60.0, 40.0]]))
    val = YOLODataset(os.path.dirname(data), split="val")          # a folder holding data.yaml
    assert val.get_annotation(0)["boxes"].tolist() == [[0.0, 0.0, 100.0, 50.0]]


@pytest.mark.parametrize("line,match", [
    ("0 0.5 0.5 0.2\n", r"a\.txt:1: expected 'class cx cy w h'"),
    ("0 0.5 0.5 0.2 0.2\nx 0.5 0.5 0.2 0.2\n", r"a\.txt:2: not numbers"),
    ("2 0.5 0.5 0.2 0.2\n", r"a\.txt:1: class 2 is not one of the 2 classes in data.yaml's names \(0\.\.1\)"),
    ("0.5 0.5 0.5 0.2 0.2\n", r"a\.txt:1: class 0.5 is not one of"),
])
def test_yolo_bad_lines_name_the_file_and_line(tmp_path, line, match):
    data = yolo_folder(tmp_path / "y", {"train/a": line})
    with pytest.raises(ValueError, match=match):
        YOLODataset(data, split="train")


def test_yolo_bad_data_yaml(tmp_path):
    data = yolo_folder(tmp_path / "y", {"train/a": ""}, yaml_text="train: images/train\n")
    with pytest.raises(ValueError, match="not a YOLO data file"):
        YOLODataset(data)
    data = yolo_folder(tmp_path / "z", {"train/a": ""}, yaml_text="train: images/train\nnames: [a, b]\n")
    with pytest.raises(ValueError, match="no split 'val'"):
        YOLODataset(data, split="val")
    data = yolo_folder(tmp_path / "w", {"train/a": ""}, yaml_text="train: images/nope\nnames: [a]\n")
    with pytest.raises(FileNotFoundError, match="neither a folder of images nor a .txt list"):
        YOLODataset(data)


def test_train_on_a_yolo_data_yaml(tmp_path):
    data = yolo_folder(tmp_path / "y", {f"train/{i}": "0 0.5 0.5 0.3 0.3\n1 0.2 0.3 0.2 0.4\n" for i in range(4)}
                       | {"val/v": "1 0.5 0.5 0.5 0.5\n"})
    trainer = Trainer(tiny_run(data, tmp_path / "run"), progress=False)
    assert isinstance(trainer.train_set, YOLODataset) and isinstance(trainer.val_set, YOLODataset)
    summary = trainer.train()
    assert summary["iteration"] == 2 and 0.0 <= summary["map"] <= 1.0
    assert scratchdet.load(str(tmp_path / "run" / "model_final.pt")).class_names == ["car", "person"]
    with pytest.raises(ValueError, match="takes its classes from data.yaml"):
        build_datasets(tiny_run(data, tmp_path / "run", classes="a,b"))


# ------------------------------------------------------------------ what --data names, only read
def test_data_kind_is_read_off_the_path(tmp_path):
    voc = shapes_voc(tmp_path / "voc")
    coco_root, coco_json = coco_folder(tmp_path / "coco")
    data_yaml = yolo_folder(tmp_path / "y", {"train/a": "0 0.5 0.5 0.2 0.2\n"})
    for data_root, kind in ((voc, "voc"), (coco_root, "coco"), (coco_json, "coco"), (data_yaml, "yolo"),
                            (os.path.dirname(data_yaml), "yolo"), (f"{voc},{voc}", "voc")):
        assert resolve_data(tiny_run(data_root, tmp_path / "run")).kind == kind, data_root
    source = resolve_data(tiny_run(f"synth:{tmp_path / 'new'}", tmp_path / "run"))
    assert source.synthetic and source.root == str(tmp_path / "new") and not os.path.exists(source.root)


def test_a_voc_folder_is_read_with_its_own_splits_and_without_val(tmp_path):
    root = make_voc(tmp_path / "voc", {f"im{i}": ann(obj("dog", 1, 1, 20, 20)) for i in range(3)}, split="trainval")
    with open(os.path.join(root, "ImageSets", "Main", "test.txt"), "w") as f:
        f.write("im0\n")
    with pytest.raises(DataError, match=r"train_split 'train': .* its splits: test, trainval; set the splits"):
        build_datasets(tiny_run(root, tmp_path / "run"))
    train, val, _ = build_datasets(tiny_run(root, tmp_path / "run", train_split="trainval", val_split="test"))
    assert len(train) == 3 and len(val) == 1
    train, val, _ = build_datasets(tiny_run(root, tmp_path / "run", train_split="trainval", val_split=""))
    assert len(train) == 3 and val is None


def test_synthetic_data_goes_only_into_a_new_or_empty_folder(tmp_path):
    new = str(tmp_path / "new")
    assert ensure_synthetic(new, 3, 2, image_size=64) == new
    made = sorted(os.listdir(new))
    mtime = os.path.getmtime(os.path.join(new, "synth.json"))
    ensure_synthetic(new, 3, 2, image_size=64)   # finished before: used as it is
    assert sorted(os.listdir(new)) == made and os.path.getmtime(os.path.join(new, "synth.json")) == mtime
    (tmp_path / "empty").mkdir()
    ensure_synthetic(str(tmp_path / "empty"), 3, 2, image_size=64)
    assert os.path.isfile(tmp_path / "empty" / "synth.json")
    other = shapes_voc(tmp_path / "voc")
    with pytest.raises(DataError, match="not empty and holds no finished synthetic data set"):
        ensure_synthetic(other, 3, 2)
    assert not os.path.exists(os.path.join(other, "synth.json"))
