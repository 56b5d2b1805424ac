"""Tiled inference (scratchdet.models.tiling, predict(tile=...), detect --tile) and tiled training
(SSDTransform(tile=...), train_tile).

Most tests use a fake detector that finds coloured rectangles exactly (the bounding box of each
colour's pixels in the window it is given), so where every box must end up is known to the pixel.
"""
import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

import scratchdet
from scratchdet.cli import main
from scratchdet.data import SSDTransform, VOCDataset, synth
from scratchdet.data.transforms import tile_crop
from scratchdet.engine import hooks
from scratchdet.engine.config import make_config
from scratchdet.engine.tiled_eval import evaluate_tiled
from scratchdet.models import build_model
from scratchdet.models.fast_inference import FastPredictor
from scratchdet.models.tiling import axis_windows, edge_keep, merge_detections, predict_tiled, tile_grid
from scratchdet.structures.errors import ConfigError
from helpers import given, settings, st

# colour -> (label, score) of the fake detector
PALETTE = {(255, 0, 0): (1, 0.9), (0, 255, 0): (2, 0.8), (0, 0, 255): (1, 0.7), (255, 255, 0): (2, 0.6),
           (255, 0, 255): (1, 0.5)}


def colour_detector(crops):
    """predict_fn: per window, the exact bounding box of each palette colour present in it."""
    results = []
    for crop in crops:
        pixels = np.asarray(crop)
        boxes, scores, labels = [], [], []
        for colour, (label, score) in PALETTE.items():
            ys, xs = np.nonzero((pixels == colour).all(axis=2))
            if len(xs):
                boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                scores.append(score)
                labels.append(label)
        results.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        "scores": torch.tensor(scores), "labels": torch.tensor(labels, dtype=torch.int64)})
    return results


def scene(width, height, rectangles):
    """A black image with filled rectangles {colour: (x1, y1, x2, y2)} (x2, y2 exclusive)."""
    image = np.zeros((height, width, 3), np.uint8)
    for colour, (x1, y1, x2, y2) in rectangles.items():
        image[y1:y2, x1:x2] = colour
    return image


def tiled(image, tile=100, overlap=0.3, **kw):
    return predict_tiled(colour_detector, image, tile, overlap, nms_threshold=0.45, keep_top_k=200, **kw)[0]


def as_rows(result):
    return sorted((int(l), [float(v) for v in b]) for b, l in zip(result["boxes"], result["labels"]))


# ------------------------------------------------------------------ the grid
@settings(max_examples=60, deadline=None)
@given(st.integers(1, 700), st.integers(1, 700), st.integers(32, 300), st.floats(0.0, 0.95))
def test_grid_covers_every_pixel(width, height, tile, overlap):
    grid = tile_grid(width, height, tile, overlap)
    covered = np.zeros((height, width), bool)
    for x1, y1, x2, y2 in grid:
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert (x2 - x1, y2 - y1) == (min(tile, width), min(tile, height))     # native resolution, never resized
        covered[y1:y2, x1:x2] = True
    assert covered.all()
    assert max(x2 for *_, x2, _ in grid) == width and max(y2 for *_, y2 in grid) == height   # last tile flush
    for length in (width, height):     # consecutive windows overlap by about the asked fraction
        windows = axis_windows(length, tile, overlap)
        for (s0, e0), (s1, _) in zip(windows, windows[1:]):
            assert s0 < s1 and e0 - s1 >= math.floor(tile * overlap) - 2


def test_image_smaller_than_a_tile_is_one_tile():
    assert tile_grid(50, 40, 64, 0.2) == [(0, 0, 50, 40)]
    # 200 px, tile 64, step <= 32: ceil(136 / 32) = 5 gaps of 27.2 px, rounded
    assert tile_grid(200, 40, 64, 0.5) == [(0, 0, 64, 40), (27, 0, 91, 40), (54, 0, 118, 40), (82, 0, 146, 40),
                                           (109, 0, 173, 40), (136, 0, 200, 40)]


@pytest.mark.parametrize("tile, overlap, name", [(16, 0.2, "tile"), (31.5, 0.2, "tile"), (float("nan"), 0.2, "tile"),
                                                 ("64", 0.2, "tile"), (64, 1.0, "tile_overlap"),
                                                 (64, -0.1, "tile_overlap"), (64, float("nan"), "tile_overlap"),
                                                 (64, float("inf"), "tile_overlap")])
def test_bad_tiling_values_raise_config_errors(tile, overlap, name):
    model = build_model("root_resnet_tiny", num_classes=3, image_size=64, width=8, extra_channels=16).eval()
    image = np.zeros((100, 100, 3), np.uint8)
    for predictor in (model, FastPredictor(model, winograd=False)):
        with pytest.raises(ConfigError, match=f"^{name} must be") as info:
            predictor.predict(image, tile=tile, tile_overlap=overlap)
        assert "\n" not in str(info.value)


# ------------------------------------------------------------------ mapping back, the edge rule, NMS
def test_boxes_map_back_exactly():
    # tile 100, overlap 0.3: windows x at 0, 70, 140 (200 wide... ) -> each object inside one window's own part
    rects = {(255, 0, 0): (10, 12, 30, 40), (0, 255, 0): (110, 20, 130, 35), (0, 0, 255): (215, 150, 236, 171),
             (255, 255, 0): (120, 210, 135, 228)}
    image = scene(240, 240, rects)
    result = tiled(image)
    expected = sorted((PALETTE[c][0], [float(v) for v in box]) for c, box in rects.items())
    assert as_rows(result) == expected
    assert result["scores"].tolist() == sorted(result["scores"].tolist(), reverse=True)
    assert sorted(result["scores"].tolist()) == pytest.approx(sorted(PALETTE[c][1] for c in rects))


def test_object_cut_by_a_tile_edge_is_reported_once_with_its_full_box():
    # windows along x: (0, 100), (70, 170), (140, 240). The red box 60..84 is cut by the second window's
    # left edge (70) and lies in the band 70..100 the first window covers: the first has it whole.
    rects = {(255, 0, 0): (60, 10, 84, 30)}
    result = tiled(scene(240, 50, rects))
    assert as_rows(result) == [(1, [60.0, 10.0, 84.0, 30.0])]
    # a sliver whose IoU with the whole box is below the NMS threshold (5/25 = 0.2): NMS alone would keep
    # it as a second detection; the edge rule drops it
    rects = {(255, 0, 0): (50, 10, 75, 30)}        # sliver 70..75: IoU 5/25 = 0.2
    result = tiled(scene(240, 50, rects))
    assert as_rows(result) == [(1, [50.0, 10.0, 75.0, 30.0])]
    # the same along y, and at a corner (cut by both the left and the top edge of a window)
    rects = {(0, 255, 0): (10, 66, 30, 90), (0, 0, 255): (66, 66, 90, 90)}
    result = tiled(scene(240, 240, rects))
    assert as_rows(result) == sorted([(2, [10.0, 66.0, 30.0, 90.0]), (1, [66.0, 66.0, 90.0, 90.0])])


def test_edge_rule_keeps_boxes_no_neighbour_sees_whole():
    # window (70, 170) on a 240-px axis; a box at its left edge reaching past 100 (the first window's end)
    boxes = torch.tensor([[70.0, 10, 120, 30],    # cut, longer than the band: kept
                          [70.0, 10, 95, 30],     # cut, inside the band 70..100: the first window has it
                          [80.0, 10, 95, 30],     # not touching the edge: kept (both report it; NMS merges)
                          [150.0, 10, 170, 30]])  # at the right edge 170, starts after 140: the third window has it
    keep = edge_keep(boxes, (70, 0, 170, 50), 240, 50, 100, 0.3)
    assert keep.tolist() == [True, False, True, False]
    # outer edges of the image are never "cut"
    assert edge_keep(torch.tensor([[0.0, 0, 20, 20]]), (0, 0, 100, 50), 240, 50, 100, 0.3).tolist() == [True]


def test_nms_across_tiles_merges_an_object_two_tiles_see_whole():
    rects = {(255, 0, 0): (75, 10, 95, 30)}       # inside the band 70..100, away from both edges: two windows see it
    image = scene(240, 50, rects)
    windows = tile_grid(240, 50, 100, 0.3)
    per_window = colour_detector([Image.fromarray(image).crop(w) for w in windows])
    assert sum(len(r["boxes"]) for r in per_window) == 2
    assert as_rows(tiled(image)) == [(1, [75.0, 10.0, 95.0, 30.0])]


def test_merge_is_class_wise_and_keeps_top_k():
    box = torch.tensor([[10.0, 10, 50, 50]])
    parts = [{"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([1])},
             {"boxes": box + 1, "scores": torch.tensor([0.8]), "labels": torch.tensor([1])},
             {"boxes": box, "scores": torch.tensor([0.7]), "labels": torch.tensor([2])}]
    merged = merge_detections(parts, nms_threshold=0.45, keep_top_k=200)
    assert merged["labels"].tolist() == [1, 2] and merged["scores"].tolist() == pytest.approx([0.9, 0.7])
    assert merge_detections(parts, nms_threshold=0.45, keep_top_k=1)["labels"].tolist() == [1]


def test_whole_image_pass_finds_objects_larger_than_a_tile():
    rects = {(255, 0, 0): (5, 20, 235, 45)}        # 230 px wide, tiles of 100: every window cuts it
    image = scene(240, 64, rects)
    without = tiled(image)
    assert as_rows(without) == [(1, [5.0, 20.0, 100.0, 45.0]), (1, [70.0, 20.0, 170.0, 45.0]),
                                (1, [140.0, 20.0, 235.0, 45.0])]        # the parts each window sees
    with_whole = tiled(image, whole_image=True)
    assert (1, [5.0, 20.0, 235.0, 45.0]) in as_rows(with_whole)


# ------------------------------------------------------------------ the real model
@pytest.fixture(scope="module")
def model():
    m = build_model("root_resnet_tiny", num_classes=3, image_size=64, width=8, extra_channels=16).eval()
    m.init_head(0.5)          # random weights that detect something: every class scores ~0.25
    m.class_names = ["a", "b"]
    return m


def test_tile_larger_than_the_image_equals_plain_predict(model):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    fast = FastPredictor(model, winograd=False)
    for predictor in (model, fast):
        plain = predictor.predict(image)[0]
        assert len(plain["boxes"]) > 0
        for tile in (120, 500):
            same = predictor.predict(image, tile=tile)[0]
            assert all(torch.equal(plain[k], same[k]) for k in ("boxes", "scores", "labels"))


def test_tiled_predict_on_a_large_image(model):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    results = model.predict([image, image[:100, :100]], tile=64, tile_overlap=0.25)
    assert len(results) == 2
    big = results[0]
    assert 0 < len(big["boxes"]) <= model.config.keep_top_k
    assert big["scores"].tolist() == sorted(big["scores"].tolist(), reverse=True)
    assert (big["boxes"][:, :2] >= 0).all() and (big["boxes"][:, 2] <= 400).all() and (big["boxes"][:, 3] <= 300).all()
    assert big["boxes"][:, 0].max() > 300 and big["boxes"][:, 1].max() > 200      # found beyond the first tiles
    # the fused path: the same layout and, up to rounding, the same scores (near-ties may reorder boxes)
    fast = FastPredictor(model, winograd=False).predict(image, tile=64, tile_overlap=0.25)[0]
    assert len(fast["boxes"]) == len(big["boxes"])
    assert torch.allclose(fast["scores"], big["scores"], atol=1e-4)


# ------------------------------------------------------------------ the command line
@pytest.fixture(scope="module")
def large_image(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    synth.generate(root / "data", 1, 0, seed=3, image_size=320, object_size=(8, 20), objects=(5, 10))
    return str(next((root / "data" / "JPEGImages").glob("*.jpg")))


@pytest.fixture(scope="module")
def weights(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    scratchdet.save(model, path)
    return str(path)


def test_detect_tile_writes_tiled_detections(tmp_path, large_image, weights):
    out = tmp_path / "out"
    assert main(["detect", large_image, "--weights", weights, "--out", str(out), "--tile", "96", "--overlap", "0.25",
                 "--score-threshold", "0.2", "--device", "cpu"]) == 0
    with open(out / "detections.jsonl") as f:
        (record,) = [json.loads(line) for line in f]
    assert (record["width"], record["height"]) == (320, 320)
    model = scratchdet.load(weights).eval()
    expected = model.predict(np.asarray(Image.open(large_image).convert("RGB")), tile=96, tile_overlap=0.25,
                             batch_size=8)[0]     # detect's --batch 8: the same network calls
    keep = expected["scores"] >= 0.2
    assert len(record["boxes"]) == int(keep.sum()) > 0
    assert record["boxes"] == [[round(float(v), 1) for v in b] for b in expected["boxes"][keep].tolist()]
    assert record["labels"] == expected["labels"][keep].tolist()
    assert os.path.isfile(out / (os.path.splitext(os.path.basename(large_image))[0] + "_det.png"))


@pytest.mark.parametrize("option, value", [("--tile", "16"), ("--tile", "abc"), ("--tile", "64.5"),
                                           ("--overlap", "1"), ("--overlap", "-0.1"), ("--overlap", "nan")])
def test_detect_bad_tiling_options_are_one_line(tmp_path, capsys, large_image, weights, option, value):
    out = tmp_path / "out"
    argv = ["detect", large_image, "--weights", weights, "--out", str(out), "--tile", "64", option, value]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("scratchdet detect: error: ") and option in err and repr(value) in err
    assert not out.exists()


def test_detect_tile_with_runtime_is_one_line(tmp_path, capsys, large_image):
    out = tmp_path / "out"
    assert main(["detect", large_image, "--runtime", "x.onnx", "--out", str(out), "--tile", "64"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--tile applies to --weights" in err and not out.exists()


# ------------------------------------------------------------------ training on tiles
@settings(max_examples=80, deadline=None)
@given(st.integers(20, 600), st.integers(20, 600), st.integers(32, 200), st.integers(0, 2**31 - 1),
       st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0.01, 0.5), st.floats(0.01, 0.5)),
                max_size=12))
def test_tile_crop_keeps_boxes_consistent(width, height, tile, seed, spec):
    boxes = np.array([[x * width, y * height, min(x * width + w * width, width), min(y * height + h * height, height)]
                      for x, y, w, h in spec], np.float64).reshape(-1, 4)
    boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
    window, kept, keep = tile_crop((width, height), boxes, tile, np.random.default_rng(seed))
    x1, y1, x2, y2 = window
    assert all(float(v).is_integer() for v in window)
    assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
    assert (x2 - x1, y2 - y1) == (min(tile, width), min(tile, height))
    assert keep.shape == (len(boxes),) and len(kept) == int(keep.sum())
    clipped = np.stack([np.clip(boxes[:, 0], x1, x2), np.clip(boxes[:, 1], y1, y2),
                        np.clip(boxes[:, 2], x1, x2), np.clip(boxes[:, 3], y1, y2)], 1) - [x1, y1, x1, y1]
    np.testing.assert_allclose(kept, clipped[keep])
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    visible = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    assert (visible[keep] >= 0.5 * area[keep] - 1e-9).all() and (visible[keep] > 0).all()
    assert (visible[~keep] < 0.5 * area[~keep] + 1e-9).all()


def test_tile_crop_is_biased_to_objects():
    boxes = np.array([[900.0, 900, 915, 915]])
    hits = sum(tile_crop((1000, 1000), boxes, 128, np.random.default_rng(s))[2][0] for s in range(200))
    assert hits >= 140        # object_prob 0.8; a uniform window would hold it about 1.5% of the time


def test_training_transform_on_tiles():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (600, 800, 3), dtype=np.uint8))
    target = {"boxes": np.array([[100.0, 100, 116, 118], [500, 300, 512, 310], [790, 590, 800, 600]]),
              "labels": np.array([1, 2, 1]), "difficult": np.zeros(3, bool), "image_id": "x"}
    plain = SSDTransform(128, train=True, seed=1)
    assert plain.tile == 0
    tf = SSDTransform(128, train=True, seed=1, tile=128, expand_prob=0.0, min_ious=(), flip_prob=0.0,
                      photometric=False)
    for index in range(20):
        pixels, out = tf(image, target, index=index)
        assert pixels.shape == (3, 128, 128)
        b = out["boxes"]
        assert ((b >= 0) & (b <= 1)).all() and (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        # native resolution: every kept box keeps its pixel size (a 16x18, 12x10 or 10x10 box, clipped at most by half)
        sizes = (b[:, 2:] - b[:, :2]) * 128
        assert (sizes <= 18.0 + 1e-4).all()
    with pytest.raises(ConfigError, match="tile"):
        SSDTransform(128, train=True, tile=16)


def test_train_tile_option():
    assert make_config("demo").train_tile == 0
    assert make_config("demo", ["train_tile=128"]).train_tile == 128
    with pytest.raises(ConfigError, match="^train_tile must be"):
        make_config("demo", ["train_tile=8"])


def test_evaluate_tiled(model, tmp_path):
    synth.generate(tmp_path / "data", 1, 2, seed=0, image_size=160, object_size=(8, 20), objects=(2, 4))
    val = VOCDataset(str(tmp_path / "data"), split="val")
    result = evaluate_tiled(model, val, tile=64, overlap=0.2)
    assert result["num_images"] == 2 and 0.0 <= result["map"] <= 1.0
    direct = model.predict([np.asarray(Image.open(r.image_path).convert("RGB")) for r in val.records], tile=64)
    for a, b in zip(result["detections"], direct):
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])


def test_training_on_tiles_evaluates_tiled(tmp_path, monkeypatch):
    calls = []

    def spy(model, dataset, tile, **kw):
        calls.append(tile)
        return evaluate_tiled(model, dataset, tile, **kw)
    monkeypatch.setattr(hooks, "evaluate_tiled", spy)
    synth.generate(tmp_path / "data", 4, 2, seed=0, image_size=200, object_size=(8, 20), objects=(2, 5))
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "data"), "--out", str(out), "--no-progress",
                 "--set", 'model_overrides={"width": 8, "extra_channels": 16, "image_size": 64}',
                 "--set", "batch_size=2", "--set", "max_iters=2", "--set", "workers=0",
                 "--set", "train_tile=64"]) == 0
    assert calls == [64]
    with open(out / "metrics.jsonl") as f:
        evals = [r for r in map(json.loads, f) if r.get("eval")]
    assert len(evals) == 1 and 0.0 <= evals[0]["map"] <= 1.0
