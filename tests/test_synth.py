"""The synthetic data set: both layouts, determinism, the CLI, and COCO AP against pycocotools."""
import contextlib
import hashlib
import io
import json
import os

import numpy as np
import pytest
import torch

from scratchdet import cli
from scratchdet.data import COCODataset, VOCDataset, synth
from scratchdet.evaluation import coco_eval, detections_to_coco, voc_eval


def tree_digest(root):
    h = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                h[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return h


def test_cli_writes_both_layouts_deterministically(tmp_path, capsys):
    assert cli.main(["synth", "--out", str(tmp_path / "a"), "--train", "12", "--val", "4", "--seed", "5"]) == 0
    assert "wrote 12 train + 4 val images" in capsys.readouterr().out
    assert cli.main(["synth", "--out", str(tmp_path / "b"), "--train", "12", "--val", "4", "--seed", "5",
                     "--workers", "2"]) == 0
    a, b = tree_digest(tmp_path / "a"), tree_digest(tmp_path / "b")
    assert a == b
    for path in ("ImageSets/Main/train.txt", "ImageSets/Main/val.txt", "ImageSets/Main/trainval.txt",
                 "annotations/instances_train.json", "annotations/instances_val.json", "classes.txt",
                 "JPEGImages/train_000011.jpg", "Annotations/val_000003.xml"):
        assert path in a, path
    assert sum(p.startswith("JPEGImages/") for p in a) == 16
    assert cli.main(["synth", "--out", str(tmp_path / "c"), "--train", "12", "--val", "4", "--seed", "6"]) == 0
    assert tree_digest(tmp_path / "c") != a
    # the train images do not depend on the number of val images
    synth.generate(tmp_path / "d", 12, 1, seed=5)
    d = tree_digest(tmp_path / "d")
    assert all(d[k] == a[k] for k in a if k.startswith("JPEGImages/train_"))


def test_cli_user_errors(tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert cli.main(["synth", "--out", str(tmp_path / "full"), "--train", "2", "--val", "1"]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert cli.main(["synth", "--out", str(tmp_path / "x"), "--train", "0", "--val", "0"]) == 2
    assert cli.main(["synth", "--out", str(tmp_path / "x"), "--size", "8"]) == 2
    # --overwrite replaces only what synth writes
    assert cli.main(["synth", "--out", str(tmp_path / "full"), "--train", "2", "--val", "1", "--overwrite"]) == 0
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_content_statistics(tmp_path):
    info = synth.generate(tmp_path, 60, 0, seed=1, image_size=128)
    assert info["classes"] == list(synth.CLASSES) and len(synth.CLASSES) >= 5
    ds = VOCDataset(tmp_path, split="train")
    anns = [ds.get_annotation(i) for i in range(len(ds))]
    boxes = torch.cat([a["boxes"] for a in anns])
    labels = torch.cat([a["labels"] for a in anns])
    difficult = torch.cat([a["difficult"] for a in anns])
    sides = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) + 1
    assert all(1 <= len(a["labels"]) <= 5 for a in anns)
    assert set(labels.tolist()) == set(range(1, len(synth.CLASSES) + 1))
    assert sides.min() >= 4 and sides.max() > 50  # from tiny (partly hidden) to large
    assert 0.0 < (sides < synth.TINY).float().mean() < 0.25  # tiny objects exist but are a minority
    assert 0.0 < difficult.float().mean() < 0.3
    # objects overlap sometimes
    overlaps = 0
    for a in anns:
        b = a["boxes"]
        iw = (torch.minimum(b[:, None, 2], b[None, :, 2]) - torch.maximum(b[:, None, 0], b[None, :, 0])).clamp(min=0)
        ih = (torch.minimum(b[:, None, 3], b[None, :, 3]) - torch.maximum(b[:, None, 1], b[None, :, 1])).clamp(min=0)
        overlaps += int(((iw * ih) > 0).sum() - len(b)) // 2
    assert overlaps > 0


def noisy_detections(anns, seed):
    rng = np.random.default_rng(seed)
    dets = []
    for a in anns:
        b = a["boxes"].numpy()
        keep = rng.random(len(b)) < 0.8
        boxes = b[keep] + rng.normal(0, 2, (int(keep.sum()), 4))
        labels = a["labels"].numpy()[keep]
        extra = rng.uniform(0, 100, (2, 2))
        boxes = np.concatenate([boxes, np.concatenate([extra, extra + 20], 1)])
        labels = np.concatenate([labels, rng.integers(1, 7, 2)])
        dets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
                     "scores": torch.tensor(rng.random(len(labels)), dtype=torch.float32)})
    return dets


def test_coco_eval_equals_direct_pycocotools(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    synth.generate(tmp_path, 1, 30, seed=2)
    gt_json = tmp_path / "annotations" / "instances_val.json"
    ds = COCODataset(tmp_path / "JPEGImages", gt_json)
    anns = [ds.get_annotation(i) for i in range(len(ds))]
    dets = noisy_detections(anns, 0)
    results = detections_to_coco(dets, [a["image_id"] for a in anns], ds.label_to_cat_id)
    ours = coco_eval(gt_json, results)
    res_path = tmp_path / "results.json"
    res_path.write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_json))
        ev = COCOeval(gt, gt.loadRes(str(res_path)), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    assert list(ours.values()) == [float(v) for v in ev.stats[:6]]
    assert 0.2 < ours["AP50"] < 0.95
    assert coco_eval(gt_json, res_path) == ours  # a results file works too
    # perfect detections
    perfect = [{"boxes": a["boxes"], "labels": a["labels"], "scores": torch.ones(len(a["labels"]))} for a in anns]
    assert coco_eval(gt_json, detections_to_coco(perfect, [a["image_id"] for a in anns]))["AP"] == 1.0
    assert coco_eval(gt_json, [])["AP"] == 0.0


def test_voc_eval_on_generated_data(tmp_path):
    synth.generate(tmp_path, 1, 30, seed=2)
    ds = VOCDataset(tmp_path, split="val")
    anns = [ds.get_annotation(i) for i in range(len(ds))]
    perfect = [{"boxes": a["boxes"], "labels": a["labels"], "scores": torch.ones(len(a["labels"]))} for a in anns]
    res = voc_eval(perfect, anns)
    assert res["map"] == 1.0 and len(res["ap"]) == len(synth.CLASSES)
    assert 0.2 < voc_eval(noisy_detections(anns, 1), anns)["map"] < 1.0


def test_generate_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        synth.generate(tmp_path / "a", -1, 2)
    with pytest.raises(ValueError, match="at least 32"):
        synth.generate(tmp_path / "a", 1, 1, image_size=16)


def _boxes(pixels_objects):
    return np.array([o["box"] for o in pixels_objects[1]], float).reshape(-1, 4)


def test_statistics_options_shape_the_objects():
    """object_size, aspect, objects and tiny: the boxes follow them (object sizes are the unstretched
    shape's, so a visible box can be smaller when cut or occluded, never much larger)."""
    sizes, counts, ratios = [], [], []
    for n in range(12):
        result = synth.render_image(4, 0, n, 512, object_size=(10, 20), objects=(6, 9), tiny=0)
        b = _boxes(result)
        counts.append(len(b))
        sizes += list(np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]))
        elongated = synth.render_image(4, 0, n, 256, aspect=(4, 6), object_size=(40, 60))
        e = _boxes(elongated)
        w, h = e[:, 2] - e[:, 0], e[:, 3] - e[:, 1]
        ratios += list(np.maximum(w, h) / np.minimum(w, h))
    assert max(sizes) <= 20 * 1.1 and np.median(sizes) >= 9
    assert 6 <= np.mean(counts) <= 9 and max(counts) <= 9
    assert np.median(ratios) >= 3.0  # occlusion and borders cut some, most stay elongated


def test_default_statistics_unchanged_by_the_new_options():
    a = synth.render_image(7, 1, 3, 128)
    b = synth.render_image(7, 1, 3, 128, object_size=None, aspect=None, objects=None, tiny=synth.TINY)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]


@pytest.mark.parametrize("flags, message", [
    (["--aspect", "0.5:2"], "--aspect must satisfy 1.0 <= low <= high"),
    (["--object-size", "10:5"], "--object-size must satisfy"),
    (["--object-size", "10:900", "--size", "128"], "does not fit in 128 px images"),
    (["--tiny", "nan"], "--tiny must be a size in px >= 0"),
    (["--objects", "3:a"], "expected LOW:HIGH numbers"),
])
def test_cli_statistics_errors_one_line(tmp_path, capsys, flags, message):
    out = tmp_path / "never"
    try:
        status = cli.main(["synth", "--out", str(out), "--train", "2", "--val", "1", *flags])
    except SystemExit as exc:  # argparse's own check
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]
    assert not out.exists()
