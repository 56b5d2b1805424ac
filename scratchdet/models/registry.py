"""Model presets and ``build_model``.

A preset is a description and the builder arguments that differ from the defaults.
``build_model(name, num_classes, **overrides)`` fills in the preset, applies the
overrides and stores the full, resolved argument dict as ``model.config``, so
``build_model(**model.config)`` rebuilds the same model, its input and detection
settings included.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

from ..data.preprocess import check_input_spec
from .families import FAMILIES
from .layers import init_weights
from .priors import SSD300_ASPECT_RATIOS, generate_priors, num_priors_per_location, prior_sizes
from .ssd import DETECT_DEFAULTS, INPUT_DEFAULTS, SSD, check_detect_settings

__all__ = ["Preset", "PRESETS", "build_model", "list_models", "describe_model", "resolve_config"]

_DEFAULTS = dict(
    arch="resnet",                 # a backbone family of scratchdet.models.families: "resnet" or "vgg16"
    depth=18,                      # ResNet depth (18 or 34) when blocks is None
    blocks=None,                   # BasicBlocks per stage, overrides depth
    stem="root",                   # "a", "b", "c" (the paper's ResNet-18 ablations) or "root"
    width=64,                      # channels of the first stage (VGG: of conv1)
    root_width=None,               # channels of the Root-ResNet root block (default: width)
    extra_channels=128,            # channels of the residual extra layers (ResNet family)
    source_stages=(3, 4),          # ResNet stages used as sources (1-based)
    extra_paddings=(1, 1, 1, 0),   # one extra layer per entry: 1 halves the size, 0 takes 3 -> 1
    bn_backbone=True,
    bn_head=True,
    image_size=300,
    prior_sizes="voc",             # "voc" or "coco" (docs/DESIGN.md), scaled to image_size
    aspect_ratios=SSD300_ASPECT_RATIOS,
    clip_priors=False,
    variances=(0.1, 0.2),
    iou_threshold=0.5,
    neg_pos_ratio=3.0,
    zero_init_residual=False,
    background_prior=0.99,         # initial softmax probability of background on every prior (0: off)
    num_classes=21,
    **INPUT_DEFAULTS,              # mean, std, resize: the preprocessing (scratchdet.data.preprocess)
    **DETECT_DEFAULTS,             # score_threshold, nms_threshold, top_k, keep_top_k: scratchdet.ops.detect
)


@dataclass(frozen=True)
class Preset:
    """A named model: what it is, and the builder arguments that differ from the defaults."""
    description: str
    args: dict


PRESETS: dict[str, Preset] = {
    "root_resnet34_ssd300": Preset("ScratchDet300: Root-ResNet-34 SSD (the paper's best model)",
                                   dict(depth=34, stem="root")),
    "root_resnet18_ssd300": Preset("Root-ResNet-18 SSD300, ablation (d)", dict(depth=18, stem="root")),
    "resnet34_ssd300": Preset("ResNet-34 SSD300 as published (7x7/2 conv + max-pool)",
                              dict(depth=34, stem="a", source_stages=(2, 3, 4), extra_paddings=(1, 1, 0))),
    "resnet18a_ssd300": Preset("ResNet-18 SSD300, ablation (a): original stem",
                               dict(depth=18, stem="a", source_stages=(2, 3, 4), extra_paddings=(1, 1, 0))),
    "resnet18b_ssd300": Preset("ResNet-18 SSD300, ablation (b): max-pool removed", dict(depth=18, stem="b")),
    "resnet18c_ssd300": Preset("ResNet-18 SSD300, ablation (c): first conv stride 1", dict(depth=18, stem="c")),
    "vgg16_ssd300": Preset("VGG16 SSD300, BN switchable (bn_backbone, bn_head)",
                           dict(arch="vgg16", extra_paddings=(1, 1, 0, 0))),
    # small CPU presets: the same Root-ResNet SSD (root block, BN in backbone and head, six sources)
    "root_resnet_tiny": Preset("tiny Root-ResNet SSD for CPU demos/tests (128 px, width 16)",
                               dict(blocks=(1, 1, 1, 1), stem="root", width=16, extra_channels=32, image_size=128,
                                    source_stages=(2, 3, 4), extra_paddings=(1, 1, 1))),
    # The README demo: a narrow full-resolution root block keeps 2-core CPU training to minutes.
    # BN in the backbone only: on the demo's short budget, BN on the predictor outputs learns
    # more slowly (README, "What the demo does").
    "root_resnet_demo": Preset("the demo's Root-ResNet SSD (128 px, root width 8, width 16, BN in backbone only)",
                               dict(blocks=(1, 1, 1, 1), stem="root", root_width=8, width=16, extra_channels=32,
                                    image_size=128, source_stages=(2, 3, 4), extra_paddings=(1, 1, 1),
                                    bn_head=False)),
    "root_resnet_small": Preset("small Root-ResNet SSD for CPU (128 px, width 32)",
                                dict(blocks=(1, 1, 1, 1), stem="root", width=32, extra_channels=64, image_size=128,
                                     source_stages=(2, 3, 4), extra_paddings=(1, 1, 1))),
}


def list_models() -> list[str]:
    """Names of all presets."""
    return sorted(PRESETS)


def describe_model(name: str) -> str:
    """One line on what the preset ``name`` is."""
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return PRESETS[name].description


def _plain(value):
    """Tuples/lists of numbers -> tuples (nested), so the config is plain and hashable-ish."""
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return value


def resolve_config(name: str, **overrides) -> dict:
    """The builder arguments of preset ``name`` with ``overrides`` applied, without building the model."""
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    unknown = sorted(set(overrides) - set(_DEFAULTS))
    if unknown:
        raise TypeError(f"build_model: unknown argument(s) {unknown}; valid: {sorted(_DEFAULTS)}")
    return {**copy.deepcopy(_DEFAULTS), **PRESETS[name].args, **overrides}


def build_model(name: str, num_classes: int | None = None, **overrides) -> SSD:
    """Build the preset ``name`` with ``num_classes`` (background included; default 21 = VOC)
    and any builder argument overridden (see ``_DEFAULTS`` in this module)."""
    cfg = resolve_config(name, **overrides)
    if num_classes is not None:
        cfg["num_classes"] = int(num_classes)
    cfg = {k: _plain(v) for k, v in cfg.items()}
    check_input_spec(cfg["image_size"], cfg["mean"], cfg["std"], cfg["resize"])
    check_detect_settings(*(cfg[k] for k in DETECT_DEFAULTS))
    if cfg["arch"] not in FAMILIES:
        raise ValueError(f"unknown arch {cfg['arch']!r}; expected one of {sorted(FAMILIES)}")
    parts = FAMILIES[cfg["arch"]](cfg)

    num_sources = len(parts.channels)
    if len(cfg["aspect_ratios"]) != num_sources:
        raise ValueError(f"aspect_ratios has {len(cfg['aspect_ratios'])} entries for {num_sources} sources")
    image_size = int(cfg["image_size"])
    min_sizes, max_sizes = prior_sizes(cfg["prior_sizes"], image_size, num_sources)
    priors = generate_priors(image_size, parts.feature_sizes, min_sizes, max_sizes, cfg["aspect_ratios"],
                             clip=cfg["clip_priors"])
    model = SSD(backbone=parts.backbone, extras=parts.extras, source_channels=parts.channels,
                feature_sizes=parts.feature_sizes, priors=priors,
                anchors_per_location=num_priors_per_location(cfg["aspect_ratios"]),
                num_classes=cfg["num_classes"], image_size=image_size, bn_head=cfg["bn_head"],
                config={"name": name, **cfg}, variances=cfg["variances"], iou_threshold=cfg["iou_threshold"],
                neg_pos_ratio=cfg["neg_pos_ratio"])
    init_weights(model, zero_init_residual=cfg["zero_init_residual"])
    model.init_head(cfg["background_prior"])
    return model
