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

import torch.nn as nn

from ..structures.image import check_input_spec
from .families import FAMILIES, generic_parts, resolve_norms
from .layers import init_weights
from .priors import default_aspect_ratios, generate_priors, num_priors_per_location, prior_sizes, ssd_prior_sizes
from .ssd import DETECT_DEFAULTS, INPUT_DEFAULTS, SSD, check_detect_settings

__all__ = ["Preset", "PRESETS", "build_model", "build_detector", "list_models", "describe_model", "resolve_config"]

_DEFAULTS = dict(
    arch="resnet",                 # a backbone family (scratchdet.models.families): resnet, vgg16, timm, custom
    depth=18,                      # ResNet depth (18 or 34) when blocks is None
    blocks=None,                   # BasicBlocks per stage, overrides depth
    stem="root",                   # "a", "b", "c" (the paper's ResNet-18 ablations) or "root"
    width=64,                      # channels of the first stage (VGG: of conv1)
    root_width=None,               # channels of the Root-ResNet root block (default: width)
    timm_model="",                 # arch "timm": the timm model name (model name "timm:<name>")
    min_source_stride=8,           # arch "timm": its feature levels with at least this stride are sources
    extras="residual",             # timm / custom: extra layers "residual" (Root-ResNet's) or "ssd" (SSD's)
    num_extras=None,               # timm / custom: how many extra layers (None: down to 1x1)
    extra_channels=128,            # channels of the extra layers (an int, or one per layer for timm / custom)
    source_stages=(3, 4),          # ResNet stages used as sources (1-based)
    extra_paddings=(1, 1, 1, 0),   # resnet / vgg16: one extra layer per entry: 1 halves the size, 0 takes 3 -> 1
    norm=None,                     # "bn", "syncbn", "gn" or "none" for backbone, extras and head at once
    backbone_norm=None,            # ... or for each (these win over norm, which wins over bn_backbone / bn_head)
    extra_norm=None,
    head_norm=None,
    bn_backbone=True,              # the paper's switches: BN in backbone (and extras) / in the head
    bn_head=True,
    image_size=300,                # one side, or (height, width)
    prior_sizes="voc",             # "voc" or "coco" (docs/DESIGN.md, scaled to the input), or "ssd": SSD's
    s_min=0.2,                     # ... scale rule s_k = s_min + (s_max - s_min)(k - 1)/(m - 1)
    s_max=0.9,
    aspect_ratios=None,            # per source; None: [2] on the first and last two sources, [2, 3] between
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
# what a timm or user backbone starts from: SSD's scale rule for the priors
_GENERIC = dict(prior_sizes="ssd")


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
    # The ablations on a CPU (scratchdet ablate): 128 px, five sources 16/8/4/2/1 (the finest at
    # stride 8, as in the paper's 300-px networks), priors by SSD's scale rule from 12.8 px
    "vgg16_ssd_small": Preset("narrow VGG16 SSD (128 px, width 8) for the BN x lr ablation (bn_backbone, bn_head)",
                              dict(arch="vgg16", width=8, image_size=128, extra_paddings=(1, 1, 1),
                                   prior_sizes="ssd", s_min=0.1)),
    "resnet18a_ssd_small": Preset("narrow ResNet-18 SSD (128 px, width 16), stem ablation (a): 7x7/2 + max-pool",
                                  dict(depth=18, stem="a", width=16, extra_channels=32, image_size=128,
                                       source_stages=(2, 3, 4), extra_paddings=(1, 1), prior_sizes="ssd",
                                       s_min=0.1)),
    "resnet18b_ssd_small": Preset("narrow ResNet-18 SSD (128 px, width 16), stem ablation (b): max-pool removed",
                                  dict(depth=18, stem="b", width=16, extra_channels=32, image_size=128,
                                       source_stages=(3, 4), extra_paddings=(1, 1, 1), prior_sizes="ssd",
                                       s_min=0.1)),
    "resnet18c_ssd_small": Preset("narrow ResNet-18 SSD (128 px, width 16), stem ablation (c): first conv stride 1",
                                  dict(depth=18, stem="c", width=16, extra_channels=32, image_size=128,
                                       source_stages=(3, 4), extra_paddings=(1, 1, 1), prior_sizes="ssd",
                                       s_min=0.1)),
    "root_resnet18_ssd_small": Preset("narrow Root-ResNet-18 SSD (128 px, width 16), stem ablation (d)",
                                      dict(depth=18, stem="root", width=16, extra_channels=32, image_size=128,
                                           source_stages=(3, 4), extra_paddings=(1, 1, 1), prior_sizes="ssd",
                                           s_min=0.1)),
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
    """The builder arguments of preset ``name`` (or ``"timm:<model>"``) with ``overrides`` applied,
    without building the model."""
    if name.startswith("timm:"):
        base = {**_GENERIC, "arch": "timm", "timm_model": name[len("timm:"):]}
    elif name == "custom":
        base = {**_GENERIC, "arch": "custom"}
    elif name in PRESETS:
        base = PRESETS[name].args
    else:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}, or timm:<name> "
                         "for any timm backbone")
    unknown = sorted(set(overrides) - set(_DEFAULTS) - {"backbone"})
    if unknown:
        raise TypeError(f"build_model: unknown argument(s) {unknown}; valid: {sorted(_DEFAULTS)}")
    return {**copy.deepcopy(_DEFAULTS), **base, **overrides}


def _check(cfg: dict) -> None:
    check_input_spec(cfg["image_size"], cfg["mean"], cfg["std"], cfg["resize"])
    check_detect_settings(*(cfg[k] for k in DETECT_DEFAULTS))
    resolve_norms(cfg)
    if cfg["arch"] not in FAMILIES:
        raise ValueError(f"unknown arch {cfg['arch']!r}; expected one of {sorted(FAMILIES)}")


def _assemble(name: str, cfg: dict, parts) -> SSD:
    """Priors, heads and the SSD around a family's parts; weights initialised from scratch."""
    num_sources = len(parts.channels)
    aspect_ratios = cfg["aspect_ratios"] or default_aspect_ratios(num_sources)
    if len(aspect_ratios) != num_sources:
        raise ValueError(f"aspect_ratios has {len(aspect_ratios)} entries for {num_sources} sources")
    if cfg["prior_sizes"] == "ssd":
        min_sizes, max_sizes = ssd_prior_sizes(num_sources, cfg["image_size"], cfg["s_min"], cfg["s_max"])
    else:
        min_sizes, max_sizes = prior_sizes(cfg["prior_sizes"], cfg["image_size"], num_sources)
    priors = generate_priors(cfg["image_size"], parts.feature_sizes, min_sizes, max_sizes, aspect_ratios,
                             clip=cfg["clip_priors"])
    model = SSD(backbone=parts.backbone, extras=parts.extras, source_channels=parts.channels,
                feature_sizes=parts.feature_sizes, priors=priors,
                anchors_per_location=num_priors_per_location(aspect_ratios), num_classes=cfg["num_classes"],
                image_size=cfg["image_size"], head_norm=resolve_norms(cfg)[2], config={"name": name, **cfg},
                variances=cfg["variances"], iou_threshold=cfg["iou_threshold"], neg_pos_ratio=cfg["neg_pos_ratio"])
    # a timm or user backbone keeps its own initialisation (timm's is tuned per family)
    own = [model.backbone] if cfg["arch"] in ("resnet", "vgg16") else []
    for part in own + [model.extras, model.loc_heads, model.conf_heads]:
        init_weights(part, zero_init_residual=cfg["zero_init_residual"])
    model.init_head(cfg["background_prior"])
    return model


def build_model(name: str, num_classes: int | None = None, **overrides) -> SSD:
    """Build the preset ``name`` (or ``"timm:<model>"``: any timm backbone, random weights) with
    ``num_classes`` (background included; default 21 = VOC) and any builder argument overridden
    (see ``_DEFAULTS`` in this module)."""
    overrides.pop("backbone", None)              # a custom model's record of its backbone class
    cfg = resolve_config(name, **overrides)
    if num_classes is not None:
        cfg["num_classes"] = int(num_classes)
    cfg = {k: _plain(v) for k, v in cfg.items()}
    _check(cfg)
    return _assemble(name, cfg, FAMILIES[cfg["arch"]](cfg))


def build_detector(backbone: nn.Module, num_classes: int = 21, **options) -> SSD:
    """An SSD around any backbone, trained from scratch: ``backbone`` is an ``nn.Module`` whose
    forward returns a list (or dict) of feature maps, finest first.

    Its channels and strides are probed once with a dummy input of ``image_size``; the SSD extra
    layers continue the pyramid down to 1x1 (``extras="residual"`` or ``"ssd"``,
    ``extra_channels``, ``num_extras``); the priors follow SSD's scale rule (``s_min``, ``s_max``,
    ``aspect_ratios``) with the source strides as steps. ``norm`` / ``backbone_norm`` converts
    the backbone's BatchNorms in place. Any other builder argument of :func:`build_model` applies.
    Save with ``scratchdet.save``; load with ``scratchdet.load(path, backbone=<a new instance>)``.
    """
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"build_detector: expected an nn.Module backbone, got {type(backbone).__name__}")
    options.pop("backbone", None)
    cfg = resolve_config("custom", **options)
    cfg["num_classes"] = int(num_classes)
    cfg = {k: _plain(v) for k, v in cfg.items()}
    cfg["backbone"] = f"{type(backbone).__module__}.{type(backbone).__qualname__}"
    _check(cfg)
    return _assemble("custom", cfg, generic_parts(backbone, cfg))
