"""SSDTransform: every box stays valid, boxes follow the pixels, results are reproducible."""
import numpy as np
import pytest
import torch
from PIL import Image

from scratchdet.constants import MEAN, STD
from scratchdet.data import SSDTransform


def random_sample(rng):
    w, h = (int(v) for v in rng.integers(8, 160, 2))
    m = int(rng.integers(0, 7))
    xy = rng.uniform(0, 1, (m, 2)) * [w, h]
    wh = rng.uniform(0, 1, (m, 2)) * ([w, h] - xy)
    boxes = np.concatenate([xy, xy + np.maximum(wh, 0.5)], 1)
    if m and rng.random() < 0.3:
        boxes[0] = [0, 0, w, h]  # a box that fills the image
    if m > 1 and rng.random() < 0.3:
        boxes[1, 2:] = boxes[1, :2] + 0.5  # a tiny one
    pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    target = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
              "labels": torch.tensor(rng.integers(1, 21, m)), "difficult": torch.tensor(rng.random(m) < 0.2),
              "image_id": "x"}
    return Image.fromarray(pixels), target


def check_output(x, t, size, target_in):
    assert x.shape == (3, size, size) and x.dtype == torch.float32 and torch.isfinite(x).all()
    b = t["boxes"]
    assert b.dtype == torch.float32 and b.shape[1] == 4 and torch.isfinite(b).all()
    assert (b >= 0).all() and (b <= 1).all()
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    assert len(t["labels"]) == len(b) == len(t["difficult"])
    assert t["labels"].dtype == torch.int64 and t["difficult"].dtype == torch.bool
    assert set(t["labels"].tolist()) <= set(target_in["labels"].tolist())
    lo, hi = (0 - np.array(MEAN)) / np.array(STD), (1 - np.array(MEAN)) / np.array(STD)
    assert (x.amin(dim=(1, 2)) >= torch.tensor(lo, dtype=torch.float32) - 1e-5).all()
    assert (x.amax(dim=(1, 2)) <= torch.tensor(hi, dtype=torch.float32) + 1e-5).all()


def test_boxes_stay_valid_over_thousands_of_draws():
    rng = np.random.default_rng(0)
    transform = SSDTransform(24, seed=7)
    kept = 0
    for i in range(2000):
        image, target = random_sample(rng)
        x, t = transform(image, target, index=i)
        check_output(x, t, 24, target)
        assert t["orig_size"] == (image.height, image.width)
        kept += len(t["labels"])
    assert kept > 2000  # the crops keep boxes most of the time


def test_eval_mode_only_resizes_and_normalises():
    image = Image.new("RGB", (40, 20), (255, 128, 0))
    target = {"boxes": torch.tensor([[4.0, 2.0, 20.0, 18.0]]), "labels": torch.tensor([3]),
              "difficult": torch.tensor([True]), "image_id": 5}
    x, t = SSDTransform(16, train=False)(image, target)
    expected = (torch.tensor([255, 128, 0]) / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert torch.allclose(x, expected[:, None, None].expand(3, 16, 16), atol=1e-5)
    assert torch.allclose(t["boxes"], torch.tensor([[0.1, 0.1, 0.5, 0.9]]))
    assert t["labels"].tolist() == [3] and t["difficult"].tolist() == [True] and t["orig_size"] == (20, 40)


def test_boxes_follow_the_pixels():
    """A white box on black: after expand/crop/flip/resize the box still frames the white pixels."""
    rng = np.random.default_rng(1)
    transform = SSDTransform(64, seed=1, photometric=False)
    s = 64
    checked = 0
    for i in range(200):
        w, h = (int(v) for v in rng.integers(40, 120, 2))
        x1, y1 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        x2, y2 = x1 + int(rng.integers(12, w - x1 + 1)), y1 + int(rng.integers(12, h - y1 + 1))
        pixels = np.zeros((h, w, 3), np.uint8)
        pixels[y1:y2, x1:x2] = 255
        target = {"boxes": torch.tensor([[x1, y1, x2, y2]], dtype=torch.float32), "labels": torch.tensor([1]),
                  "difficult": torch.tensor([False]), "image_id": i}
        x, t = transform(Image.fromarray(pixels), target, index=i)
        if len(t["boxes"]) == 0:
            continue
        bx1, by1, bx2, by2 = (t["boxes"][0] * s).tolist()
        if min(bx2 - bx1, by2 - by1) < 6:
            continue
        white = x[0] > 1.5  # normalised white is ~2.2, black ~-2.1, the mean fill 0
        inner = white[int(np.ceil(by1 + 1.5)):int(by2 - 1.5), int(np.ceil(bx1 + 1.5)):int(bx2 - 1.5)]
        outer = white.clone()
        outer[max(int(by1 - 1.5), 0):int(np.ceil(by2 + 1.5)), max(int(bx1 - 1.5), 0):int(np.ceil(bx2 + 1.5))] = False
        assert inner.all(), i
        assert not outer.any(), i
        checked += 1
    assert checked > 100


def test_seeded_and_reproducible():
    image, target = random_sample(np.random.default_rng(5))
    a = SSDTransform(32, seed=3)
    b = SSDTransform(32, seed=3)
    x1, t1 = a(image, target, index=4)
    x2, t2 = b(image, target, index=4)
    assert torch.equal(x1, x2) and torch.equal(t1["boxes"], t2["boxes"])
    outs = {a(image, target, index=i)[0].sum().item() for i in range(6)}
    assert len(outs) > 1  # different indices draw differently
    a.set_epoch(1)
    assert not torch.equal(a(image, target, index=4)[0], x1)
    a.set_epoch(0)
    assert torch.equal(a(image, target, index=4)[0], x1)
    unseeded = SSDTransform(32)
    assert len({unseeded(image, target)[0].sum().item() for _ in range(6)}) > 1


def test_drop_difficult():
    image = Image.new("RGB", (50, 50))
    target = {"boxes": torch.tensor([[0.0, 0, 50, 50], [10, 10, 40, 40]]), "labels": torch.tensor([1, 2]),
              "difficult": torch.tensor([True, False]), "image_id": 0}
    for i in range(50):
        _, t = SSDTransform(32, seed=0, drop_difficult=True)(image, target, index=i)
        assert 1 not in t["labels"].tolist() and not t["difficult"].any()


def test_bad_arguments():
    with pytest.raises(ValueError, match="size must be positive"):
        SSDTransform(0)
    with pytest.raises(ValueError, match="max_expand"):
        SSDTransform(32, max_expand=0.5)
