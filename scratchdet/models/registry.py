"""Model presets and ``build_model``.

A preset is a plain dict of builder arguments. ``build_model(name, num_classes,
**overrides)`` fills in the preset, applies the overrides and stores the full,
resolved argument dict as ``model.config``, so ``build_model(**model.config)``
rebuilds the same architecture.
"""
from __future__ import annotations

import copy

from .backbones import RESNET_BLOCKS, ResNetBackbone, VGG16Backbone
from .layers import init_weights
from .priors import SSD300_ASPECT_RATIOS, generate_priors, num_priors_per_location, prior_sizes
from .ssd import SSD, residual_extras, vgg_extras

__all__ = ["PRESETS", "build_model", "list_models"]

_DEFAULTS = dict(
    arch="resnet",                 # "resnet" (ResNet / Root-ResNet) or "vgg16"
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
    prior_sizes="voc",             # "voc" or "coco" (DESIGN.md), scaled to image_size
    aspect_ratios=SSD300_ASPECT_RATIOS,
    clip_priors=False,
    variances=(0.1, 0.2),
    iou_threshold=0.5,
    neg_pos_ratio=3.0,
    zero_init_residual=False,
    background_prior=0.99,         # initial softmax probability of background on every prior (0: off)
    num_classes=21,
)

PRESETS: dict[str, dict] = {
    "root_resnet34_ssd300": dict(depth=34, stem="root"),
    "root_resnet18_ssd300": dict(depth=18, stem="root"),
    "resnet34_ssd300": dict(depth=34, stem="a", source_stages=(2, 3, 4), extra_paddings=(1, 1, 0)),
    "resnet18a_ssd300": dict(depth=18, stem="a", source_stages=(2, 3, 4), extra_paddings=(1, 1, 0)),
    "resnet18b_ssd300": dict(depth=18, stem="b"),
    "resnet18c_ssd300": dict(depth=18, stem="c"),
    "vgg16_ssd300": dict(arch="vgg16", extra_paddings=(1, 1, 0, 0)),
    # small CPU presets: the same Root-ResNet SSD (root block, BN in backbone and head, six sources)
    "root_resnet_tiny": dict(blocks=(1, 1, 1, 1), stem="root", width=16, extra_channels=32, image_size=128,
                             source_stages=(2, 3, 4), extra_paddings=(1, 1, 1)),
    # the README demo: a narrow full-resolution root block keeps 2-core CPU training to minutes.
    # BN in the backbone only: on an 800-iteration budget, BN on the predictor outputs learns slower
    # (demo VOC07 mAP 0.70 with it, 0.87 without; README, "What the demo does")
    "root_resnet_demo": dict(blocks=(1, 1, 1, 1), stem="root", root_width=8, width=16, extra_channels=32,
                             image_size=128, source_stages=(2, 3, 4), extra_paddings=(1, 1, 1), bn_head=False),
    "root_resnet_small": dict(blocks=(1, 1, 1, 1), stem="root", width=32, extra_channels=64, image_size=128,
                              source_stages=(2, 3, 4), extra_paddings=(1, 1, 1)),
}

_DESCRIPTIONS = {
    "root_resnet34_ssd300": "ScratchDet300: Root-ResNet-34 SSD (the paper's best model)",
    "root_resnet18_ssd300": "Root-ResNet-18 SSD300, ablation (d)",
    "resnet34_ssd300": "ResNet-34 SSD300 as published (7x7/2 conv + max-pool)",
    "resnet18a_ssd300": "ResNet-18 SSD300, ablation (a): original stem",
    "resnet18b_ssd300": "ResNet-18 SSD300, ablation (b): max-pool removed",
    "resnet18c_ssd300": "ResNet-18 SSD300, ablation (c): first conv stride 1",
    "vgg16_ssd300": "VGG16 SSD300, BN switchable (bn_backbone, bn_head)",
    "root_resnet_tiny": "tiny Root-ResNet SSD for CPU demos/tests (128 px, width 16)",
    "root_resnet_small": "small Root-ResNet SSD for CPU (128 px, width 32)",
    "root_resnet_demo": "the demo's Root-ResNet SSD (128 px, root width 8, width 16, BN in backbone only)",
}


def list_models() -> list[str]:
    """Names of all presets."""
    return sorted(PRESETS)


def describe_model(name: str) -> str:
    return _DESCRIPTIONS.get(name, "")


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
    return {**copy.deepcopy(_DEFAULTS), **PRESETS[name], **overrides}


def build_model(name: str, num_classes: int | None = None, **overrides) -> SSD:
    """Build the preset ``name`` with ``num_classes`` (background included; default 21 = VOC)
    and any builder argument overridden (see ``_DEFAULTS`` in this module)."""
    cfg = resolve_config(name, **overrides)
    if num_classes is not None:
        cfg["num_classes"] = int(num_classes)
    cfg = {k: _plain(v) for k, v in cfg.items()}
    config = {"name": name, **cfg}

    image_size = int(cfg["image_size"])
    if cfg["arch"] == "resnet":
        blocks = cfg["blocks"] or RESNET_BLOCKS.get(cfg["depth"])
        if blocks is None:
            raise ValueError(f"depth must be one of {sorted(RESNET_BLOCKS)} (or give blocks), got {cfg['depth']}")
        backbone = ResNetBackbone(blocks, cfg["stem"], cfg["width"], cfg["source_stages"], bn=cfg["bn_backbone"],
                                  root_width=cfg["root_width"])
        extras = residual_extras(backbone.out_channels[-1], cfg["extra_channels"], cfg["extra_paddings"],
                                 bn=cfg["bn_backbone"])
        extra_channels = [cfg["extra_channels"]] * len(cfg["extra_paddings"])
        residual = True
    elif cfg["arch"] == "vgg16":
        backbone = VGG16Backbone(bn=cfg["bn_backbone"], width=cfg["width"])
        extras = vgg_extras(backbone.out_channels[-1], cfg["extra_paddings"], bn=cfg["bn_backbone"],
                            scale=cfg["width"] / 64)
        extra_channels = [layer[-1].conv.out_channels for layer in extras]
        residual = False
    else:
        raise ValueError(f"unknown arch {cfg['arch']!r}; expected 'resnet' or 'vgg16'")

    num_sources = len(backbone.out_channels) + len(extra_channels)
    if len(cfg["aspect_ratios"]) != num_sources:
        raise ValueError(f"aspect_ratios has {len(cfg['aspect_ratios'])} entries for {num_sources} sources")
    sizes = list(backbone.feature_sizes(image_size))
    from .ssd import _extra_out_size
    for p in cfg["extra_paddings"]:
        sizes.append(_extra_out_size(sizes[-1], p, residual))
    min_sizes, max_sizes = prior_sizes(cfg["prior_sizes"], image_size, num_sources)
    priors = generate_priors(image_size, sizes, min_sizes, max_sizes, cfg["aspect_ratios"],
                             clip=cfg["clip_priors"])
    model = SSD(backbone, extras, extra_channels, cfg["extra_paddings"], residual, cfg["num_classes"],
                image_size, priors, num_priors_per_location(cfg["aspect_ratios"]), cfg["bn_head"], config,
                variances=cfg["variances"], iou_threshold=cfg["iou_threshold"],
                neg_pos_ratio=cfg["neg_pos_ratio"])
    init_weights(model, zero_init_residual=cfg["zero_init_residual"])
    model.init_head(cfg["background_prior"])
    return model
