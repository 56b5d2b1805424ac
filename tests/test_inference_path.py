"""One inference path: the same preprocessing, detection settings and postprocessing for evaluation,
model.predict, FastPredictor.predict and `scratchdet eval` / `scratchdet detect`; settings saved with the model."""
import inspect
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import scratchdet
from scratchdet.data import COCODataset, SSDTransform, VOCDataset, synth
from scratchdet.models.transform import postprocess, preprocess
from scratchdet.structures.errors import ConfigError
from scratchdet.structures.image import read_image, resize_and_normalise, to_pil_rgb
from scratchdet.engine.config import make_config
from scratchdet.evaluation.evaluate import evaluate_model, pixel_inclusive, predict_dataset
from scratchdet.engine.trainer import Trainer
from scratchdet.evaluation import voc_eval
from scratchdet.models import build_model
from scratchdet.models.fast_inference import FastPredictor

TINY = dict(width=8, extra_channels=16, image_size=64)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synth") / "data")
    synth.generate(root, 16, 6, seed=3, image_size=80)
    return root


def uniform_model(**overrides):
    """A tiny model whose untrained scores are spread over the classes, so every image has detections."""
    torch.manual_seed(0)
    return build_model("root_resnet_tiny", num_classes=7, **{**TINY, "background_prior": 0.0, "keep_top_k": 30,
                                                           **overrides}).eval()


def val_images(root):
    ds = VOCDataset(root, split="val")
    return [read_image(r.image_path) for r in ds.records], ds


# ------------------------------------------------------------------ 1. one preprocessing path
@pytest.mark.parametrize("resize", ["bilinear", "bicubic", "nearest", "box"])
def test_eval_transform_gives_exactly_the_pixels_of_preprocess(synth_root, resize):
    images, ds = val_images(synth_root)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    tf = SSDTransform(48, train=False, mean=mean, std=std, resize=resize)
    batch, sizes = preprocess(images, 48, mean, std, resize)
    for i, image in enumerate(images):
        x, t = tf(image, ds.get_annotation(i))
        assert torch.equal(x, batch[i])
        assert sizes[i] == image.size and t["orig_size"] == (image.height, image.width)


def test_preprocess_takes_pil_arrays_and_tensors_alike():
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    inputs = [Image.fromarray(array), array, torch.from_numpy(array).permute(2, 0, 1),
              torch.from_numpy(array).permute(2, 0, 1).float() / 255, Image.fromarray(array).convert("RGBA"),
              np.concatenate([array, np.full((30, 50, 1), 255, np.uint8)], 2)]
    batch, sizes = preprocess(inputs, 32)
    assert batch.shape == (6, 3, 32, 32) and sizes == [(50, 30)] * 6
    for b in batch[1:]:
        assert torch.equal(b, batch[0])
    grey = rng.integers(0, 256, (20, 20), dtype=np.uint8)
    one = resize_and_normalise(grey, 16)
    assert torch.equal(one, resize_and_normalise(np.stack([grey] * 3, 2), 16))
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        preprocess([torch.randn(3, 10, 10)], 16)                     # an already-normalised tensor
    with pytest.raises(TypeError, match="uint8 or float"):
        to_pil_rgb(torch.zeros(3, 4, 4, dtype=torch.int32))
    with pytest.raises(TypeError, match="PIL image, a uint8 array"):
        to_pil_rgb("image.jpg")
    with pytest.raises(ValueError, match="non-empty"):
        to_pil_rgb(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="resize must be one of"):
        SSDTransform(16, train=False, resize="lanczos3")


def test_postprocess_scales_each_image_to_its_own_pixels():
    boxes = torch.tensor([[[0.1, 0.2, 0.5, 1.0], [0, 0, 0, 0]], [[0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 1.0, 1.0]]])
    out = postprocess((boxes, torch.tensor([[0.9, 0.0], [0.8, 0.7]]), torch.tensor([[2, -1], [1, 3]]),
                       torch.tensor([1, 2])), [(100, 50), (20, 40)])
    assert out[0]["boxes"].tolist() == [[10.0, 10.0, 50.0, 50.0]] and out[0]["labels"].tolist() == [2]
    assert out[1]["boxes"].tolist() == [[0.0, 0.0, 20.0, 40.0], [10.0, 20.0, 20.0, 40.0]]
    with pytest.raises(ValueError, match="2 images of detections but 1 sizes"):
        postprocess((boxes, boxes[..., 0], boxes[..., 0].long(), torch.tensor([1, 1])), [(1, 1)])


def test_scratchdet_eval_detections_are_model_predict_detections(synth_root, tmp_path):
    model = uniform_model(mean=(0.4, 0.5, 0.6), resize="bicubic")
    weights = tmp_path / "m.pt"
    scratchdet.save(model, weights)
    images, ds = val_images(synth_root)
    expected = model.predict(images, batch_size=len(images))
    assert all(len(e["labels"]) > 0 for e in expected)

    # the evaluation loop, in process
    tf = SSDTransform.from_config(model.config)
    detections, _ = predict_dataset(model, VOCDataset(synth_root, split="val", transform=tf), batch_size=len(images))
    # and the command, which writes every detection it scored
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "scratchdet", "eval", "--weights", str(weights), "--data",
                           synth_root, "--split", "val", "--batch-size", str(len(images)), "--out",
                           str(tmp_path / "ev")], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = json.loads((tmp_path / "ev" / "detections.json").read_text())
    assert [w["image_id"] for w in written] == [r.image_id for r in ds.records]
    for exp, det, w in zip(expected, detections, written):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(det[key], exp[key]), key
            assert torch.equal(torch.tensor(w[key], dtype=exp[key].dtype), exp[key]), key


# ------------------------------------------------------------------ 2. settings belong to the model
def test_input_and_detection_settings_are_saved_and_used(tmp_path):
    settings = dict(mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5), resize="nearest", score_threshold=0.02,
                    nms_threshold=0.3, top_k=50, keep_top_k=7)
    model = uniform_model(**settings)
    for key, value in settings.items():
        assert model.config[key] == value
    assert model.detect_settings == {k: settings[k] for k in ("score_threshold", "nms_threshold", "top_k",
                                                               "keep_top_k")}
    path = tmp_path / "m.pt"
    scratchdet.save(model, path)
    loaded = scratchdet.load(path)
    assert loaded.config == model.config and loaded.input_spec == model.input_spec
    image = (torch.rand(3, 70, 90, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    batch, _ = loaded.preprocess([image])
    assert torch.equal(batch, preprocess([image], 64, settings["mean"], settings["std"], "nearest")[0])
    out = loaded.predict([image])[0]
    assert 0 < len(out["labels"]) <= 7 and (out["scores"] > 0.02).all()
    assert len(loaded.predict([image], keep_top_k=3)[0]["labels"]) == 3          # a per-call override
    boxes, scores, labels, num = loaded(batch)
    assert boxes.shape == (1, 7, 4)                                                 # forward uses them too
    for bad, match in [(dict(std=(1, 0, 1)), "std must be positive"), (dict(resize="area"), "resize must be"),
                       (dict(nms_threshold=1.5), "nms_threshold"), (dict(keep_top_k=0), "keep_top_k"),
                       (dict(mean=(0.5, 0.5)), "mean must be three")]:
        with pytest.raises(ValueError, match=match):
            build_model("root_resnet_tiny", **bad)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("option, value", [("score_threshold", NAN), ("score_threshold", INF),
                                           ("nms_threshold", NAN), ("nms_threshold", -INF), ("top_k", NAN),
                                           ("top_k", INF), ("top_k", 2.5), ("keep_top_k", NAN), ("keep_top_k", INF)])
def test_nan_and_inf_detection_settings_are_refused_naming_the_option(option, value):
    model = uniform_model()
    image = torch.zeros(3, 20, 20, dtype=torch.uint8)
    with pytest.raises(ConfigError, match=rf"^{option} must be"):
        model.predict([image], **{option: value})
    with pytest.raises(ConfigError, match=rf"^{option} must be"):
        FastPredictor(model).predict([image], **{option: value})
    loc, logits = model.forward_raw(model.preprocess([image])[0])
    with pytest.raises(ConfigError, match=rf"^{option} must be"):
        model.detect(loc, logits, **{option: value})
    with pytest.raises(ConfigError, match=rf"^{option} must be"):
        build_model("root_resnet_tiny", **TINY, **{option: value})
    with pytest.raises(ConfigError, match="batch_size must be a"):
        model.predict([image], batch_size=value)


def test_nan_or_inf_image_tensors_are_refused_saying_so():
    model = uniform_model()
    for bad in (NAN, INF, -INF):
        image = torch.full((3, 20, 20), 0.5)
        image[1, 3, 4] = bad
        with pytest.raises(ValueError, match=r"contains NaN or inf \(1 values\)"):
            model.predict([image])
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):              # finite but normalised
        model.predict([torch.full((3, 20, 20), 1.5)])


def test_a_checkpoint_from_before_the_settings_loads_with_the_defaults(tmp_path):
    model = build_model("root_resnet_tiny", **TINY)
    path = tmp_path / "old.pt"
    scratchdet.save(model, path)
    payload = torch.load(path, weights_only=True)
    for key in ("mean", "std", "resize", "score_threshold", "nms_threshold", "top_k", "keep_top_k"):
        del payload["config"][key]
    torch.save(payload, path)
    loaded = scratchdet.load(path)
    assert loaded.config == model.config


def test_train_model_overrides_set_the_preprocessing_and_detection_settings(synth_root, tmp_path):
    overrides = {**TINY, "mean": [0.3, 0.3, 0.3], "resize": "box", "score_threshold": 0.05, "keep_top_k": 9}
    cfg = make_config("demo", {"data_root": synth_root, "out_dir": str(tmp_path / "run"), "batch_size": 4,
                               "max_iters": 2, "warmup_iters": 0, "workers": 0, "ckpt_every": 0,
                               "model_overrides": overrides})
    trainer = Trainer(cfg, progress=False)
    for transform in (trainer.train_set.transform, trainer.val_set.transform):
        assert transform.mean == (0.3, 0.3, 0.3) and transform.resize == "box" and transform.size == 64
    trainer.train()
    loaded = scratchdet.load(str(tmp_path / "run" / "model_final.pt"))
    assert loaded.config["keep_top_k"] == 9 and loaded.config["mean"] == (0.3, 0.3, 0.3)


# ------------------------------------------------------------------ 3. one predict API
def test_fast_predictor_predict_takes_and_returns_what_model_predict_does():
    model = uniform_model()
    fast = FastPredictor(model)
    assert inspect.signature(fast.predict).parameters.keys() == inspect.signature(model.predict).parameters.keys()
    images = [(torch.rand(3, 50 + 10 * i, 80, generator=torch.Generator().manual_seed(i)) * 255).to(torch.uint8)
              for i in range(3)]
    for kwargs in ({}, dict(score_threshold=0.16, keep_top_k=5), dict(nms_threshold=0.2, top_k=20)):
        ref, out = model.predict(images, **kwargs), fast.predict(images, batch_size=2, **kwargs)
        assert len(ref) == len(out) == 3
        for r, o in zip(ref, out):
            assert set(o) == set(r) == {"boxes", "scores", "labels"}
            assert o["boxes"].dtype == r["boxes"].dtype and len(o["labels"]) == len(r["labels"]) > 0
            # the fused network rounds differently: near-tied scores may swap, so compare as sets
            torch.testing.assert_close(o["scores"], r["scores"], rtol=0, atol=1e-5)
            assert torch.equal(torch.bincount(o["labels"]), torch.bincount(r["labels"]))


# ------------------------------------------------------------------ 4. evaluation conventions in one place
def test_trainer_scores_a_coco_val_set_with_continuous_boxes(synth_root, tmp_path):
    ann = os.path.join(synth_root, "annotations")
    images = os.path.join(synth_root, "JPEGImages")
    cfg = make_config("demo", {"dataset": "coco", "coco_train_images": images,
                               "coco_train_json": os.path.join(ann, "instances_train.json"),
                               "coco_val_images": images, "coco_val_json": os.path.join(ann, "instances_val.json"),
                               "out_dir": str(tmp_path / "run"), "batch_size": 4, "max_iters": 2, "warmup_iters": 0,
                               "workers": 0, "ckpt_every": 0, "model_overrides": TINY})
    trainer = Trainer(cfg, progress=False)
    assert isinstance(trainer.val_set, COCODataset) and not pixel_inclusive(trainer.val_set)
    assert pixel_inclusive(VOCDataset(synth_root, split="val"))
    trainer.model.set_detect_settings(score_threshold=0.0)   # score something, even untrained
    trainer.model.init_head(0.0)
    result = trainer.evaluate()
    dets, anns = result["detections"], result["annotations"]
    assert result["map"] == voc_eval(dets, anns, pixel_inclusive=False)["map"]
    assert result["map"] != voc_eval(dets, anns, pixel_inclusive=True)["map"]
    assert set(result["coco"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    record = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")][-1]
    assert record["eval"] and record["map"] == result["map"] and record["coco"] == result["coco"]
    same = evaluate_model(trainer.model, trainer.val_set)     # what `scratchdet eval` calls
    assert same["map"] == result["map"]


# ------------------------------------------------------------------ 5. targets checked once, on the host
def test_targets_reach_the_model_on_the_host_and_bad_labels_are_named(synth_root, tmp_path, monkeypatch):
    cfg = make_config("demo", {"data_root": synth_root, "out_dir": str(tmp_path / "run"), "batch_size": 4,
                               "max_iters": 1, "warmup_iters": 0, "workers": 0, "ckpt_every": 0,
                               "model_overrides": TINY})
    trainer = Trainer(cfg, progress=False)
    seen = []
    real = type(trainer.model).prepare_targets

    def spy(self, targets, device):
        seen.append({k: v.device.type for k, v in targets.items() if torch.is_tensor(v)})
        return real(self, targets, device)

    monkeypatch.setattr(type(trainer.model), "prepare_targets", spy)
    trainer.train(stop_after=1)
    monkeypatch.undo()
    assert seen == [{"boxes": "cpu", "labels": "cpu", "difficult": "cpu"}]
    images = torch.randn(2, 3, 64, 64)
    bad = {"boxes": torch.tensor([[[0.1, 0.1, 0.5, 0.5]], [[0.2, 0.2, 0.6, 0.6]]]), "labels": torch.tensor([[1], [7]])}
    with pytest.raises(ValueError, match="label 7 of image 1, box 0 is out of range for a model with 7 classes"):
        trainer.model.train()(images, bad)
    with pytest.raises(ValueError, match="2 labels but boxes of shape"):
        trainer.model(images, [{"boxes": torch.zeros(1, 4), "labels": torch.tensor([1, 2])}])
