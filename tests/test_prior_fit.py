"""Priors against data (models/prior_fit.py, engine/data_fit.py): the best possible recall on
hand-made cases, the per-source refit on elongated (1:4-1:6) boxes, its determinism, a model with
fitted priors saved and loaded, image_size=auto's rule on made-up statistics, the defaults
leaving the model as it was, and bad options as one-line CLI errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import scratchdet
from scratchdet.data import synth
from scratchdet.engine.config import make_config
from scratchdet.engine.data_fit import (Annotations, choose_image_size, collect_annotations, fit_size_to_budget,
                                       image_size_limits, training_pass_seconds)
from scratchdet.engine.data_setup import build_datasets
from scratchdet.engine.trainer import Trainer
from scratchdet.models import SSDConfig, build_model
from scratchdet.models.prior_fit import assign_to_sources, kmeans_shapes, prior_recall, refit_priors
from scratchdet.models.priors import source_prior_shapes, tile_priors
from scratchdet.structures.errors import ConfigError
from ssd300_priors import ssd300_priors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MODEL = {"width": 8, "extra_channels": 16, "image_size": 96}


def elongated_boxes(n=400, seed=0, lo=4.0, hi=6.0):
    """Normalised xyxy boxes of aspect lo..hi, half tall and half wide, 3-12% of the image across."""
    g = torch.Generator().manual_seed(seed)
    short = torch.empty(n, dtype=torch.float64).uniform_(0.03, 0.12, generator=g)
    long = (short * torch.empty(n, dtype=torch.float64).uniform_(lo, hi, generator=g)).clamp(max=0.95)
    tall = torch.rand(n, generator=g) < 0.5
    w, h = torch.where(tall, short, long), torch.where(tall, long, short)
    cx = torch.rand(n, generator=g, dtype=torch.float64) * (1 - w) + w / 2
    cy = torch.rand(n, generator=g, dtype=torch.float64) * (1 - h) + h / 2
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1).float()


# ------------------------------------------------------------------------ best possible recall
def test_a_box_equal_to_a_prior_has_recall_one():
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.2, 0.2, 0.1, 0.1]])
    boxes = torch.tensor([[0.4, 0.3, 0.6, 0.7]])            # = the first prior
    r = prior_recall(priors, boxes, 0.5)
    assert (r.recall, r.low_iou_share, r.num_boxes) == (1.0, 0.0, 1)


def test_recall_and_low_iou_share_count_boxes():
    priors = torch.tensor([[0.25, 0.25, 0.5, 0.5]])
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5],               # IoU 1
                          [0.0, 0.0, 0.5, 0.3],               # IoU 0.6
                          [0.0, 0.0, 0.5, 0.2],               # IoU 0.4: under 0.5, not under 0.3
                          [0.6, 0.6, 0.9, 0.9]])              # IoU 0
    r = prior_recall(priors, boxes, 0.5)
    assert r.recall == pytest.approx(0.5) and r.low_iou_share == pytest.approx(0.25)
    assert prior_recall(priors, boxes, 0.35).recall == pytest.approx(0.75)
    assert prior_recall(priors, torch.zeros(0, 4)).recall == 1.0
    assert "best possible recall 0.50 at IoU 0.5 (25% of boxes best IoU < 0.3)" == r.line()


def test_ssd_priors_cover_square_boxes_better_than_elongated_ones():
    model = build_model("root_resnet_tiny", num_classes=3)
    square = elongated_boxes(lo=1.0, hi=1.2)
    assert prior_recall(model.priors, square).recall > prior_recall(model.priors, elongated_boxes()).recall


# ------------------------------------------------------------------------ the refit
def test_kmeans_with_iou_distance_finds_the_clusters():
    wh = torch.tensor([[0.1, 0.6]] * 5 + [[0.6, 0.1]] * 5 + [[0.3, 0.3]] * 5)
    centroids = kmeans_shapes(wh, torch.tensor([[0.2, 0.2], [0.25, 0.25], [0.3, 0.3]]))
    got = sorted(map(tuple, centroids.tolist()))
    torch.testing.assert_close(torch.tensor(got), torch.tensor([(0.1, 0.6), (0.3, 0.3), (0.6, 0.1)]))


def test_boxes_go_to_the_source_of_their_scale():
    shapes = [[(0.1, 0.1), (0.15, 0.15)], [(0.4, 0.4), (0.5, 0.5)]]
    wh = torch.tensor([[0.05, 0.3], [0.5, 0.2], [0.1, 0.1], [0.9, 0.9]])
    assert assign_to_sources(wh, shapes).tolist() == [0, 1, 0, 1]


def test_refit_raises_recall_on_elongated_boxes_keeps_the_layout_and_is_deterministic():
    model = build_model("root_resnet_tiny", num_classes=3)
    shapes = source_prior_shapes(model.config, len(model.feature_sizes))
    boxes = elongated_boxes()
    fit = refit_priors(boxes, shapes, model.config.image_size, model.feature_sizes)
    assert fit.before.recall == prior_recall(model.priors, boxes).recall     # the model's own priors
    assert fit.accepted and fit.after.recall > fit.before.recall + 0.15
    assert fit.after.low_iou_share < 0.01      # (one box in 400 may lose: the fit is for the many)
    assert [len(s) for s in fit.shapes] == [len(s) for s in shapes]          # the heads keep their shapes
    again = refit_priors(boxes, shapes, model.config.image_size, model.feature_sizes)
    assert again.shapes == fit.shapes and again.after == fit.after


def test_refit_is_not_kept_when_it_does_not_help():
    model = build_model("root_resnet_tiny", num_classes=3)
    shapes = source_prior_shapes(model.config, len(model.feature_sizes))
    # boxes exactly on the priors: recall 1 already
    boxes = torch.cat([model.priors[:, :2] - model.priors[:, 2:] / 2, model.priors[:, :2] + model.priors[:, 2:] / 2], 1)
    fit = refit_priors(boxes[::7], shapes, model.config.image_size, model.feature_sizes)
    assert fit.before.recall == 1.0 and not fit.accepted


# ------------------------------------------------------------------------ the model keeps its priors
def test_a_model_with_fitted_priors_saves_and_loads_with_them(tmp_path):
    base = build_model("root_resnet_tiny", num_classes=3)
    shapes = source_prior_shapes(base.config, len(base.feature_sizes))
    fit = refit_priors(elongated_boxes(), shapes, base.config.image_size, base.feature_sizes)
    torch.manual_seed(0)
    model = build_model("root_resnet_tiny", num_classes=3, prior_shapes=fit.flat_shapes()).eval()
    assert torch.equal(model.priors, tile_priors(model.config.image_size, model.feature_sizes, fit.shapes).float())
    assert not torch.equal(model.priors, base.priors) and model.priors.shape == base.priors.shape
    path = tmp_path / "fitted.pt"
    scratchdet.save(model, path)
    loaded = scratchdet.load(path).eval()
    assert loaded.config.prior_shapes == model.config.prior_shapes
    assert torch.equal(loaded.priors, model.priors)
    image = np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    a, b = model.predict([image], score_threshold=0.0)[0], loaded.predict([image], score_threshold=0.0)[0]
    assert all(torch.equal(a[k], b[k]) for k in ("boxes", "scores", "labels"))


def test_defaults_are_todays_priors_and_old_configs_still_load():
    assert SSDConfig().prior_shapes is None
    model = build_model("root_resnet34_ssd300", num_classes=21)
    torch.testing.assert_close(model.priors.clamp(0, 1), ssd300_priors(), rtol=0, atol=1e-6)
    old = {k: v for k, v in model.config.to_dict().items() if k != "prior_shapes"}   # a file from before
    assert SSDConfig.from_dict(old).prior_shapes is None


@pytest.mark.parametrize("bad", [((0.1, 0.2, 0.3),), ((0.1, -0.2),), ((),)])
def test_bad_prior_shapes_are_refused_by_name(bad):
    with pytest.raises(ConfigError, match="prior_shapes"):
        SSDConfig(prior_shapes=bad)


def test_prior_shapes_for_the_wrong_number_of_sources_are_refused():
    with pytest.raises(ConfigError, match="prior_shapes has 1 entries for 6 sources"):
        build_model("root_resnet_tiny", num_classes=3, prior_shapes=((0.1, 0.1),))


# ------------------------------------------------------------------------ image_size=auto
def made_up(image_wh, box_side, n=40):
    """n images of image_wh, each with one square box of box_side px."""
    sizes = np.tile(np.asarray(image_wh, np.float64), (n, 1))
    boxes = np.tile(np.asarray([[10.0, 10.0, 10.0 + box_side, 10.0 + box_side]]), (n, 1))
    return Annotations(sizes, boxes, np.arange(n))


@pytest.mark.parametrize("image_wh, box_side, preset, expected", [
    ((300, 300), 8, 300, 320),       # 8 px at 300 -> 300 px needed -> the next multiple of 32
    ((300, 300), 4, 300, 320),       # 600 px needed, capped at the images' 300 px (rounded up)
    ((600, 600), 4, 300, 576),       # 1200 px needed, capped at 608, clamped to twice the preset
    ((128, 128), 40, 128, 64),       # 26 px is enough: clamped to half the preset
    ((320, 320), 6, 128, 256),       # the study's larger images: 427 px needed, at most twice 128
    ((400, 200), 10, 300, 256),      # non-square: the box is 10 / sqrt(400 * 200) of the side: 226 px needed
])
def test_image_size_auto_picks_as_documented(image_wh, box_side, preset, expected):
    size, why = choose_image_size(made_up(image_wh, box_side), preset)
    assert size == expected, why
    assert size % 32 == 0 and image_size_limits(preset)[0] <= size <= image_size_limits(preset)[1]
    assert "5th-percentile object" in why


def test_image_size_limits():
    assert image_size_limits(300) == (160, 576)
    assert image_size_limits(128) == (64, 256)
    assert image_size_limits((96, 160)) == (64, 192)


def pixels_clock(seconds_at_128):
    """A made-up training pass: its cost in proportion to the pixels; records the sizes timed."""
    timed = []

    def seconds_at(side):
        timed.append(side)
        return seconds_at_128 * (side / 128) ** 2
    return seconds_at, timed


@pytest.mark.parametrize("budget, expected", [
    (10_000, 256),     # plenty of time: the size the objects ask for
    (600, 192),        # 480 s usable / 800 steps = 0.6 s a step: 192 px (0.56 s), not 224 (0.77 s)
    (300, 128),        # 0.3 s a step allowed: only the preset's size (0.25 s) fits
    (60, 128),         # not even the preset's size fits the recipe: never under it
])
def test_image_size_auto_under_a_budget_fits_the_recipes_steps(budget, expected):
    seconds_at, timed = pixels_clock(0.25)
    size, why = fit_size_to_budget(256, 128, budget, 800, seconds_at)
    assert size == expected, why
    assert sorted(timed) == [128, 256]                     # two measurements, the rest interpolated
    assert "the recipe needs 800" in why
    assert ("256 px would fit" in why) == (expected != 256)


def test_image_size_auto_under_a_budget_needs_no_timing_at_or_under_the_preset():
    seconds_at, timed = pixels_clock(0.25)
    assert fit_size_to_budget(128, 128, 60, 800, seconds_at)[0] == 128
    assert fit_size_to_budget(96, 128, 60, 800, seconds_at)[0] == 96
    assert timed == []


def test_training_pass_seconds_times_a_forward_and_backward():
    model = build_model("root_resnet_tiny", num_classes=3, **TINY_MODEL)
    seconds = training_pass_seconds(model, 2, 96)
    assert 0 < seconds < 60
    assert all(p.grad is None for p in model.parameters())      # nothing left behind
    assert 0 < training_pass_seconds(model.to(memory_format=torch.channels_last), 2, 96) < 60
    assert training_pass_seconds(torch.nn.Linear(2, 2), 2, 96) is None


# ------------------------------------------------------------------------ in training
@pytest.fixture(scope="module")
def elongated_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("elongated") / "data")
    synth.generate(root, 16, 4, seed=0, image_size=96, object_size=(8, 40), aspect=(4, 6), objects=(1, 3))
    return root


def tiny(root, out_dir, **overrides):
    base = {"data_root": root, "out_dir": str(out_dir), "batch_size": 4, "max_iters": 2, "warmup_iters": 1,
            "workers": 0, "ckpt_every": 100, "eval_every": 0, "log_every": 1, "model_overrides": TINY_MODEL,
            "cache_images": False}
    base.update(overrides)
    return make_config("demo", base)


def test_collect_annotations_reads_the_records(elongated_root):
    cfg = tiny(elongated_root, "unused")
    train, _, _ = build_datasets(cfg)
    ann = collect_annotations(train)
    assert len(ann.image_sizes) == len(train) and (ann.image_sizes == 96).all()
    assert len(ann.boxes) == sum(len(r.boxes) for r in train.records)
    assert collect_annotations(object()) is None


def test_training_prints_recall_and_priors_auto_refits_with_the_same_weights(elongated_root, tmp_path, capsys):
    default = Trainer(tiny(elongated_root, tmp_path / "default"), progress=False)
    line = capsys.readouterr().out
    assert "priors: best possible recall" in line and "at IoU 0.5" in line and "refit" not in line
    assert default.model.config.prior_shapes is None
    auto = Trainer(tiny(elongated_root, tmp_path / "auto", priors="auto"), progress=False)
    out = capsys.readouterr().out
    assert "priors: refit per source" in out and "fitted priors used" in out
    report = auto.data_fit["priors"]
    assert report["refit"] and report["after"]["recall"] > report["before"]["recall"]
    assert report["before"] == default.data_fit["priors"]["before"]
    assert auto.model.config.prior_shapes is not None
    assert auto.model.priors.shape == default.model.priors.shape and not torch.equal(auto.model.priors,
                                                                                      default.model.priors)
    a, b = auto.model.state_dict(), default.model.state_dict()      # same random start, other priors
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summary = auto.train()
    assert summary["data_fit"] == auto.data_fit
    with open(tmp_path / "auto" / "data_fit.json") as f:
        assert json.load(f)["priors"]["refit"] is True
    final = scratchdet.load(str(tmp_path / "auto" / "model_final.pt"))
    assert torch.equal(final.priors, auto.model.priors)


def test_priors_auto_keeps_ssds_priors_above_the_threshold(elongated_root, tmp_path, capsys):
    trainer = Trainer(tiny(elongated_root, tmp_path / "run", priors="auto", prior_recall_threshold=0.01),
                      progress=False)
    assert "SSD's priors kept" in capsys.readouterr().out
    assert trainer.model.config.prior_shapes is None and not trainer.data_fit["priors"]["refit"]


def test_image_size_auto_sets_the_model_and_the_transforms(elongated_root, tmp_path, capsys):
    trainer = Trainer(tiny(elongated_root, tmp_path / "run", image_size="auto"), progress=False)
    out = capsys.readouterr().out
    size = trainer.data_fit["image_size"]["size"]
    assert f"image_size: auto -> {size} px" in out
    assert size == choose_image_size(collect_annotations(trainer.train_set), 96)[0]
    assert trainer.model.config.image_size == size
    assert trainer.train_set.transform.size == size and trainer.val_set.transform.size == size
    image = trainer.train_set[0][0]
    assert tuple(image.shape[-2:]) == (size, size)


def test_image_size_auto_under_a_short_budget_keeps_the_presets_size(tmp_path, capsys):
    """A 96-px preset on 192-px images with small objects, which ask for more, and a budget that
    cannot fit the recipe's steps at a larger size: the preset's size, said why, and the run's
    random state as without the timing."""
    root = str(tmp_path / "data")
    synth.generate(root, 8, 2, seed=0, image_size=192, object_size=(6, 12))
    cfg = tiny(root, tmp_path / "run", image_size="auto", time_budget="1s", max_iters=100000)
    wanted = choose_image_size(collect_annotations(build_datasets(cfg)[0]), 96)[0]
    assert wanted > 96, "the data set must ask for more than the preset's size for this test"
    trainer = Trainer(cfg, progress=False)
    out = capsys.readouterr().out
    assert trainer.model.config.image_size == 96
    assert f"{wanted} px reduced to 96 px" in out and "the recipe needs 100000" in out
    plain = Trainer(tiny(root, tmp_path / "plain"), progress=False)
    a, b = trainer.model.state_dict(), plain.model.state_dict()      # same weights: the timing drew no randoms
    assert all(torch.equal(a[k], b[k]) for k in a if "priors" not in k)


@pytest.mark.parametrize("option, message", [
    ("priors=bogus", "priors must be 'default'"),
    ("prior_recall_threshold=1.5", "prior_recall_threshold must be in (0, 1]"),
    ("image_size=320", "image_size must be 'auto'"),
])
def test_bad_options_are_one_line_errors(option, message, tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, "-m", "scratchdet", "train", "--data", str(tmp_path),
                           "--set", option], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
