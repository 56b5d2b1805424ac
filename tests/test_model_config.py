"""The typed model config (SSDConfig): frozen, checked field by field, the one record the model's
settings are read from, saved as plain data; checkpoints written before it still load and predict
the same."""
import dataclasses
import math
import os

import pytest
import torch

import scratchdet
from scratchdet.models import MODEL_PRESETS, SSD, SSDConfig, build_model
from scratchdet.models.registry import resolve_config
from scratchdet.structures.errors import CheckpointError, ConfigError

DATA = os.path.join(os.path.dirname(__file__), "data")
TINY = dict(width=8, extra_channels=16, image_size=64)


# ------------------------------------------------------------------ checkpoints of the dict-config format (v1)
def test_a_version_1_checkpoint_loads_and_predicts_what_the_old_code_predicted():
    path = os.path.join(DATA, "checkpoint_v1.pt")
    assert os.path.getsize(path) < 3_000_000
    raw = torch.load(path, weights_only=True)
    assert raw["version"] == 1 and isinstance(raw["config"], dict)
    old = torch.load(os.path.join(DATA, "checkpoint_v1_predictions.pt"), weights_only=True)
    model = scratchdet.load(path)
    assert isinstance(model.config, SSDConfig)
    assert {k: model.config[k] for k in old["config"]} == old["config"]          # every old key, same value
    assert model.class_names == [f"class{i}" for i in range(1, 7)]
    image = old["image"].numpy()
    batch, _ = model.preprocess([image])
    loc, logits = model.forward_raw(batch)
    torch.testing.assert_close(loc, old["loc"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, old["logits"], rtol=1e-5, atol=1e-5)
    pred = model.predict([image])[0]
    assert len(pred["labels"]) == len(old["labels"]) == 20
    torch.testing.assert_close(pred["scores"], old["scores"], rtol=0, atol=1e-5)
    torch.testing.assert_close(pred["boxes"], old["boxes"], rtol=0, atol=1e-3)
    assert torch.equal(pred["labels"], old["labels"])


def test_save_writes_version_2_plain_data_and_load_restores_the_record(tmp_path):
    model = build_model("root_resnet_tiny", num_classes=5, **TINY, mean=[0.5, 0.4, 0.3], keep_top_k=9)
    path = tmp_path / "m.pt"
    scratchdet.save(model, path)
    raw = torch.load(path, weights_only=True)                       # plain data only
    assert raw["version"] == 2 and raw["config"] == model.config.to_dict()
    assert type(raw["config"]) is dict and raw["config"]["mean"] == (0.5, 0.4, 0.3)
    loaded = scratchdet.load(path)
    assert loaded.config == model.config and loaded.config.keep_top_k == 9
    raw["version"] = 3
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="format version 3, this scratchdet reads 1, 2"):
        scratchdet.load(path)
    raw["version"] = 2
    raw["config"]["no_such_field"] = 1
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="no_such_field"):
        scratchdet.load(path)


# ------------------------------------------------------------------ the record
def test_defaults_types_and_overrides():
    cfg = SSDConfig()
    assert cfg.image_size == 300 and cfg.variances == (0.1, 0.2) and cfg.top_k == 400 and cfg.arch == "resnet"
    other = dataclasses.replace(cfg, blocks=[1, 1, 1, 1], image_size=[96, 128], mean=[0.5, 0.5, 0.5], top_k=10.0)
    assert other.blocks == (1, 1, 1, 1) and other.image_size == (96, 128) and other.mean == (0.5, 0.5, 0.5)
    assert isinstance(other.top_k, int) and other.top_k == 10
    assert cfg.replace(width=8).width == 8 and cfg.width == 64
    with pytest.raises(TypeError, match="unknown model config field"):
        cfg.replace(widht=8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.width = 8
    assert SSDConfig.from_dict(cfg.to_dict()) == cfg and hash(SSDConfig.from_dict(cfg.to_dict())) == hash(cfg)
    assert dict(cfg) == cfg.to_dict() and cfg["image_size"] == 300 and cfg.get("nope") is None


FLOAT_FIELDS = [f.name for f in dataclasses.fields(SSDConfig) if f.type in ("float", float)]


@pytest.mark.parametrize("field", FLOAT_FIELDS + ["top_k", "keep_top_k", "width", "num_classes"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_inf_are_refused_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"^{field} must be a finite number, got {value}"):
        SSDConfig(**{field: value})


@pytest.mark.parametrize("changes, match", [
    (dict(mean=(0.5, math.nan, 0.5)), r"^mean\[1\] must be a finite number"),
    (dict(variances=(0.1, math.inf)), r"^variances\[1\] must be a finite number"),
    (dict(image_size="big"), r"^image_size must be a whole number or a list of whole numbers"),
    (dict(blocks=[1, 2.5]), r"^blocks\[1\] must be a whole number"),
    (dict(bn_head="yes"), r"^bn_head must be True or False"),
    (dict(num_classes=1), r"^num_classes counts the background"),
    (dict(nms_threshold=1.5), r"^nms_threshold must be in \[0, 1\]"),
    (dict(keep_top_k=0), r"^keep_top_k must be a whole number >= 1"),
    (dict(resize="area"), r"^resize must be one of"),
    (dict(s_min=0.5, s_max=0.4), r"s_min <= s_max"),
    (dict(variances=(0.1,)), r"^variances must be two positive numbers"),
    (dict(extras="fpn"), r"^extras must be 'residual' or 'ssd'"),
    (dict(aspect_ratios=[[2], 3]), r"^aspect_ratios\[1\] must be a list of numbers"),
])
def test_bad_values_are_refused_naming_the_field(changes, match):
    with pytest.raises(ConfigError, match=match):
        SSDConfig(**changes)
    with pytest.raises(ConfigError, match=match):
        build_model("root_resnet_tiny", **changes)


# ------------------------------------------------------------------ the model reads its settings from it
def test_the_model_reads_every_setting_from_its_read_only_config():
    model = build_model("root_resnet_tiny", num_classes=4, **TINY, variances=(0.2, 0.3))
    cfg = model.config
    assert isinstance(cfg, SSDConfig) and cfg.name == "root_resnet_tiny"
    assert (model.num_classes, model.image_size, model.variances) == (4, 64, (0.2, 0.3))
    assert model.input_spec == {"image_size": 64, "mean": cfg.mean, "std": cfg.std, "resize": "bilinear"}
    assert model.criterion.variances == (0.2, 0.3)
    with pytest.raises(AttributeError):
        model.config = cfg.replace(num_classes=9)
    model.set_detect_settings(score_threshold=0.2, keep_top_k=5)
    assert model.config.score_threshold == 0.2 and model.detect_settings["keep_top_k"] == 5
    assert model.config.replace(score_threshold=0.01, keep_top_k=200) == cfg
    with pytest.raises(ConfigError, match="^score_threshold must be a finite number"):
        model.set_detect_settings(score_threshold=math.nan)
    with pytest.raises(TypeError, match="unknown setting"):
        model.set_detect_settings(width=3)


def test_from_config_builds_what_build_model_builds():
    torch.manual_seed(0)
    a = build_model("root_resnet_demo", num_classes=3)
    torch.manual_seed(0)
    b = SSD.from_config(resolve_config("root_resnet_demo", num_classes=3))
    assert a.config == b.config
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(a.priors, b.priors)
    c = SSD.from_config(b.config.replace(image_size=96))
    assert c.input_size == (96, 96) and c.priors.shape[0] != b.priors.shape[0]
    with pytest.raises(ConfigError, match="unknown arch"):
        SSD.from_config(b.config.replace(arch="resnext"))


def test_presets_are_model_presets():
    assert "root_resnet_demo" in MODEL_PRESETS and not hasattr(scratchdet.models, "PRESETS")
    for name, preset in MODEL_PRESETS.items():
        assert isinstance(resolve_config(name), SSDConfig), name
        assert set(preset.args) <= set(SSDConfig.field_names())
