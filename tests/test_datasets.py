"""VOC and COCO readers: generated data, hand-written edge cases, bad input (a DataError naming the file).

The property tests of the readers are in test_readers_property.py."""
import json
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from scratchdet.data import BadImageError, COCODataset, SSDTransform, VOCDataset, collate_detection, synth
from scratchdet.engine.sampler import ResumableBatchSampler
from scratchdet.structures.errors import DataError


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    synth.generate(root, 16, 6, seed=11)
    return str(root)


def make_voc(root, entries, size=(40, 30), classes=None, split="train"):
    """entries: {image_id: xml text or None (no annotation file)}; writes images of `size`."""
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for image_id, xml in entries.items():
        Image.new("RGB", size, (200, 10, 10)).save(os.path.join(root, "JPEGImages", image_id + ".jpg"))
        if xml is not None:
            with open(os.path.join(root, "Annotations", image_id + ".xml"), "w") as f:
                f.write(xml)
    with open(os.path.join(root, "ImageSets", "Main", split + ".txt"), "w") as f:
        f.write("\n".join(entries) + "\n")
    if classes:
        with open(os.path.join(root, "classes.txt"), "w") as f:
            f.write("\n".join(classes) + "\n")
    return str(root)


def obj(name, x1, y1, x2, y2, difficult=0):
    return (f"<object><name>{name}</name><difficult>{difficult}</difficult>"
            f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")


def ann(*objects, size=(40, 30)):
    return (f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
            + "".join(objects) + "</annotation>")


def test_voc_reads_generated_data_and_agrees_with_coco(synth_root):
    voc = VOCDataset(synth_root, split="train")
    coco = COCODataset(os.path.join(synth_root, "JPEGImages"), os.path.join(synth_root, "annotations/instances_train.json"))
    assert voc.classes == list(synth.CLASSES) == coco.classes
    assert len(voc) == len(coco) == 16
    assert len(VOCDataset(synth_root, split="trainval")) == 22
    for i in range(len(voc)):
        image, t = voc[i]
        cimage, ct = coco[i]
        assert image.mode == "RGB" and image.size == (synth.DEFAULT_IMAGE_SIZE,) * 2
        assert t["boxes"].dtype == torch.float32 and t["labels"].dtype == torch.int64 and t["difficult"].dtype == torch.bool
        assert t["labels"].min() >= 1 and t["labels"].max() <= len(voc.classes)
        assert torch.equal(t["labels"], ct["labels"]) and torch.equal(t["difficult"], ct["difficult"])
        # VOC gives 0-based inclusive pixel indices, COCO continuous coordinates: x2 differs by one
        assert torch.equal(t["boxes"][:, :2], ct["boxes"][:, :2])
        assert torch.equal(t["boxes"][:, 2:] + 1, ct["boxes"][:, 2:])
        assert t["image_id"] == f"train_{i:06d}" and ct["image_id"] == i + 1
    labels = torch.cat([voc.get_annotation(i)["labels"] for i in range(len(voc))])
    assert len(labels.unique()) >= 4


def test_voc_edge_cases(tmp_path):
    root = make_voc(tmp_path, {
        "normal": ann(obj("cat", 1, 1, 10, 10), obj("dog", 5, 5, 20, 25, difficult=1)),
        "no_objects": ann(),
        "empty_file": "",
        "outside": ann(obj("cat", -5, -5, 100, 100)),
        "degenerate": ann(obj("cat", 10, 10, 10, 20), obj("cat", 12, 5, 8, 9), obj("dog", 2, 2, 6, 6)),
    }, classes=["cat", "dog"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = VOCDataset(root, split="train")
    degenerate = [w for w in caught if "degenerate" in str(w.message)]
    assert len(degenerate) == 1 and "dropped 2 degenerate box(es) of 6" in str(degenerate[0].message)
    assert ds.classes == ["cat", "dog"]
    _, t = ds[0]
    assert t["boxes"].tolist() == [[0, 0, 9, 9], [4, 4, 19, 24]]
    assert t["labels"].tolist() == [1, 2] and t["difficult"].tolist() == [False, True]
    for i in (1, 2):
        _, t = ds[i]
        assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,) and t["difficult"].shape == (0,)
    assert ds[3][1]["boxes"].tolist() == [[0, 0, 40, 30]]  # clipped to the image
    assert ds[4][1]["labels"].tolist() == [2]
    # the transformed empty image still works end to end
    ds.transform = SSDTransform(32, seed=0)
    images, targets, metas = collate_detection([ds[1], ds[2]])
    assert images.shape == (2, 3, 32, 32) and targets["labels"].shape == (2, 1) and (targets["labels"] == 0).all()


def test_voc_unknown_class_lists_known(tmp_path):
    root = make_voc(tmp_path, {"a": ann(obj("zebra", 1, 1, 5, 5))}, classes=["cat", "dog"])
    with pytest.raises(DataError, match=r"a\.xml: unknown class 'zebra'; known classes: cat, dog"):
        VOCDataset(root, split="train")


def test_voc_default_classes_and_explicit_classes(tmp_path):
    root = make_voc(tmp_path, {"a": ann(obj("person", 1, 1, 5, 5))})
    assert VOCDataset(root, split="train")[0][1]["labels"].tolist() == [15]
    assert VOCDataset(root, split="train", classes=["person"])[0][1]["labels"].tolist() == [1]


def test_voc_malformed_and_xxe_xml_are_refused(tmp_path):
    root = make_voc(tmp_path / "bad", {"broken": "<annotation><object></annotation>"}, classes=["cat"])
    with pytest.raises(DataError, match=r"broken\.xml: malformed XML"):
        VOCDataset(root, split="train")
    secret = tmp_path / "secret.txt"
    secret.write_text("cat")
    xxe = (f'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY xxe SYSTEM "file://{secret}">]>'
           "<annotation><object><name>&xxe;</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax>"
           "<ymax>5</ymax></bndbox></object></annotation>")
    root = make_voc(tmp_path / "xxe", {"evil": xxe}, classes=["cat"])
    with pytest.raises(DataError, match=r"evil\.xml: refused: DOCTYPE"):
        VOCDataset(root, split="train")
    bomb = ('<!DOCTYPE a [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
            "<annotation>&b;</annotation>")
    root = make_voc(tmp_path / "bomb", {"bomb": bomb}, classes=["cat"])
    with pytest.raises(DataError, match="refused"):
        VOCDataset(root, split="train")
    # the same attack encoded as UTF-16, which a byte search for "<!DOCTYPE" would miss
    root = make_voc(tmp_path / "utf16", {"evil16": None}, classes=["cat"])
    with open(os.path.join(root, "Annotations", "evil16.xml"), "wb") as f:
        f.write(xxe.replace('version="1.0"', 'version="1.0" encoding="UTF-16"').encode("utf-16"))
    with pytest.raises(DataError, match="refused"):
        VOCDataset(root, split="train")


def test_voc_missing_files(tmp_path):
    root = make_voc(tmp_path, {"a": None}, classes=["cat"])
    with pytest.raises(FileNotFoundError, match=r"Annotations/a\.xml"):
        VOCDataset(root, split="train")
    with pytest.raises(FileNotFoundError, match=r"test\.txt; available splits: \['train'\]"):
        VOCDataset(root, split="test")


def test_missing_and_corrupt_images(tmp_path):
    root = make_voc(tmp_path, {"good": ann(obj("cat", 1, 1, 5, 5)), "gone": ann(), "corrupt": ann()}, classes=["cat"])
    os.remove(os.path.join(root, "JPEGImages", "gone.jpg"))
    with open(os.path.join(root, "JPEGImages", "corrupt.jpg"), "wb") as f:
        f.write(b"\xff\xd8 this is not a jpeg")
    ds = VOCDataset(root, split="train")
    with pytest.raises(BadImageError, match=r"image file not found: .*gone\.jpg"):
        ds[1]
    with pytest.raises(BadImageError, match=r"cannot decode image .*corrupt\.jpg"):
        ds[2]
    with pytest.warns(UserWarning, match="skipping bad image"):
        ds = VOCDataset(root, split="train", skip_bad_images=True)
    assert len(ds) == 2 and [os.path.basename(p) for p, _ in ds.skipped] == ["gone.jpg"]
    with pytest.warns(UserWarning, match=r"corrupt\.jpg"):
        _, t = ds[1]  # the corrupt image is replaced by the next good one
    assert t["image_id"] == "good" and len(ds.skipped) == 2


def test_multiple_roots(tmp_path):
    a = make_voc(tmp_path / "VOC2007", {"x": ann(obj("cat", 1, 1, 5, 5))}, classes=["cat"])
    b = make_voc(tmp_path / "VOC2012", {"y": ann(), "z": ann()}, classes=["cat"])
    ds = VOCDataset([a, b], split="train")
    assert len(ds) == 3 and [ds[i][1]["image_id"] for i in range(3)] == ["x", "y", "z"]


def test_image_size_disagreeing_with_annotation_is_clipped_to_the_image(tmp_path):
    root = make_voc(tmp_path, {"a": ann(obj("cat", 30, 1, 40, 30), size=(100, 100))}, size=(20, 20), classes=["cat"])
    with pytest.warns(UserWarning, match="image is 20x20 but annotated 100x100"):
        _, t = VOCDataset(root, split="train")[0]
    assert t["boxes"].shape == (0, 4)


def write_json(path, data):
    with open(path, "w") as f:
        f.write(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def coco_file(tmp_path, annotations, images=None):
    Image.new("RGB", (50, 40)).save(tmp_path / "a.jpg")
    Image.new("RGB", (50, 40)).save(tmp_path / "b.jpg")
    data = {"images": images or [{"id": 7, "file_name": "a.jpg", "width": 50, "height": 40},
                                 {"id": 9, "file_name": "b.jpg", "width": 50, "height": 40}],
            "annotations": annotations,
            "categories": [{"id": 5, "name": "cat"}, {"id": 2, "name": "dog"}]}
    return write_json(tmp_path / "instances.json", data)


def test_coco_reader_mapping_crowd_and_clipping(tmp_path):
    path = coco_file(tmp_path, [
        {"id": 1, "image_id": 7, "category_id": 5, "bbox": [1, 2, 10, 20], "iscrowd": 0},
        {"id": 2, "image_id": 7, "category_id": 2, "bbox": [40, 30, 20, 20], "iscrowd": 1},
        {"id": 3, "image_id": 7, "category_id": 2, "bbox": [5, 5, 0, 10], "iscrowd": 0},
    ])
    with pytest.warns(UserWarning, match="dropped 1 degenerate box"):
        ds = COCODataset(tmp_path, path)
    assert ds.classes == ["dog", "cat"] and ds.label_to_cat_id == {1: 2, 2: 5}
    _, t = ds[0]
    assert t["boxes"].tolist() == [[1, 2, 11, 22], [40, 30, 50, 40]]
    assert t["labels"].tolist() == [2, 1] and t["difficult"].tolist() == [False, True] and t["image_id"] == 7
    _, t = ds[1]
    assert t["boxes"].shape == (0, 4) and t["image_id"] == 9  # an image with no annotations is valid
    ds = COCODataset(tmp_path, path, crowd="drop", classes=["cat"])  # the degenerate dog box is not read
    assert ds.classes == ["cat"] and ds[0][1]["labels"].tolist() == [1]


def test_coco_bad_input(tmp_path):
    with pytest.raises(DataError, match=r"broken\.json: malformed JSON"):
        COCODataset(tmp_path, write_json(tmp_path / "broken.json", '{"images": ['))
    with pytest.raises(DataError, match=r"notcoco\.json: not a COCO instances file"):
        COCODataset(tmp_path, write_json(tmp_path / "notcoco.json", [1, 2]))
    path = coco_file(tmp_path, [{"id": 1, "image_id": 7, "category_id": 99, "bbox": [1, 2, 3, 4]}])
    with pytest.raises(DataError, match="category_id 99"):
        COCODataset(tmp_path, path)
    with pytest.raises(DataError, match="unknown class.*'horse'.*known classes: dog, cat"):
        COCODataset(tmp_path, coco_file(tmp_path, []), classes=["horse"])
    with pytest.raises(FileNotFoundError, match="nothere.json"):
        COCODataset(tmp_path, tmp_path / "nothere.json")
    ds = COCODataset(tmp_path, write_json(tmp_path / "empty.json", {"images": [], "annotations": [], "categories": []}))
    assert len(ds) == 0


def test_collate_pads_and_rejects_untransformed(synth_root):
    ds = VOCDataset(synth_root, split="val", transform=SSDTransform(64, train=False))
    batch = [ds[i] for i in range(4)]
    images, targets, metas = collate_detection(batch)
    g = max(len(t["labels"]) for _, t in batch)
    assert images.shape == (4, 3, 64, 64) and targets["boxes"].shape == (4, g, 4)
    assert targets["labels"].dtype == torch.int64 and targets["difficult"].dtype == torch.bool
    for i, (_, t) in enumerate(batch):
        n = len(t["labels"])
        assert torch.equal(targets["boxes"][i, :n], t["boxes"]) and (targets["labels"][i, n:] == 0).all()
        assert metas[i] == {"image_id": t["image_id"], "orig_size": (128, 128)}
    with pytest.raises(TypeError, match="give the data set a transform"):
        collate_detection([VOCDataset(synth_root, split="val")[0]])
    with pytest.raises(ValueError, match="empty batch"):
        collate_detection([])


def test_dataloader_workers_are_deterministic(synth_root):
    ds = VOCDataset(synth_root, split="train", transform=SSDTransform(48, seed=3))

    def epoch(workers):
        loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers, collate_fn=collate_detection)
        return [(x, t["boxes"]) for x, t, _ in loader]

    a, b = epoch(0), epoch(2)
    assert all(torch.equal(x1, x2) and torch.equal(b1, b2) for (x1, b1), (x2, b2) in zip(a, b))
    ds.set_epoch(1)
    c = epoch(0)
    assert not all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, c))


@pytest.mark.parametrize("workers", [0, 2])
def test_image_cache_and_epoch_tagged_indices_give_byte_identical_batches(synth_root, workers):
    def batches(cached, with_epoch):
        ds = VOCDataset(synth_root, split="train", transform=SSDTransform(48, train=True, seed=3))
        if cached:
            assert ds.cache_images()
        sampler = ResumableBatchSampler(len(ds), 4, seed=1, with_epoch=with_epoch)
        loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=workers,
                                             collate_fn=collate_detection, persistent_workers=workers > 0 and with_epoch)
        out = []
        for epoch in range(2):
            sampler.set_position(epoch)
            if not with_epoch:
                ds.set_epoch(epoch)
            out += [(images, targets["boxes"], targets["labels"]) for images, targets, _ in loader]
        return out

    stock = batches(cached=False, with_epoch=False)
    fast = batches(cached=True, with_epoch=True)
    assert len(stock) == len(fast) == 8
    for a, b in zip(stock, fast):
        for x, y in zip(a, b):
            assert torch.equal(x, y)
    assert not torch.equal(stock[0][0], stock[4][0])      # the epochs differ


def test_image_cache_respects_its_size_limit(synth_root):
    ds = VOCDataset(synth_root, split="train")
    assert not ds.cache_images(max_bytes=1000) and ds._cache is None
    assert ds.cache_images() and torch.equal(torch.from_numpy(np.asarray(ds[0][0])),
                                             torch.from_numpy(np.asarray(VOCDataset(synth_root, "train")[0][0])))
