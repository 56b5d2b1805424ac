"""Backbone families: each builds its backbone and its own SSD extra layers, and reports the
channels and sizes of every source once (the SSD, its priors and its heads are laid out from them)."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from .backbones import RESNET_BLOCKS, ResNetBackbone, VGG16Backbone
from .extras import extra_out_size, residual_extras, vgg_extras

__all__ = ["SSDParts", "FAMILIES"]


@dataclass
class SSDParts:
    """What a backbone family hands the SSD: the modules, and per source (finest first) its channels
    and its side in pixels at the model's input size."""
    backbone: nn.Module
    extras: nn.ModuleList
    channels: list[int]
    feature_sizes: list[int]


def _with_extras(backbone, extras: nn.ModuleList, extra_channels, paddings, residual: bool,
                 image_size: int) -> SSDParts:
    sizes = list(backbone.feature_sizes(image_size))
    for p in paddings:
        sizes.append(extra_out_size(sizes[-1], p, residual))
    return SSDParts(backbone, extras, list(backbone.out_channels) + list(extra_channels), sizes)


def resnet_family(cfg: dict) -> SSDParts:
    """ResNet / Root-ResNet backbone with residual extras (128 channels, stride 2)."""
    blocks = cfg["blocks"] or RESNET_BLOCKS.get(cfg["depth"])
    if blocks is None:
        raise ValueError(f"depth must be one of {sorted(RESNET_BLOCKS)} (or give blocks), got {cfg['depth']}")
    backbone = ResNetBackbone(blocks, cfg["stem"], cfg["width"], cfg["source_stages"], bn=cfg["bn_backbone"],
                              root_width=cfg["root_width"])
    extras = residual_extras(backbone.out_channels[-1], cfg["extra_channels"], cfg["extra_paddings"],
                             bn=cfg["bn_backbone"])
    return _with_extras(backbone, extras, [cfg["extra_channels"]] * len(cfg["extra_paddings"]),
                        cfg["extra_paddings"], True, cfg["image_size"])


def vgg16_family(cfg: dict) -> SSDParts:
    """SSD's VGG16 (conv4_3 through L2Norm, fc7) with SSD's plain extras."""
    backbone = VGG16Backbone(bn=cfg["bn_backbone"], width=cfg["width"])
    extras = vgg_extras(backbone.out_channels[-1], cfg["extra_paddings"], bn=cfg["bn_backbone"],
                        scale=cfg["width"] / 64)
    return _with_extras(backbone, extras, [layer[-1].conv.out_channels for layer in extras],
                        cfg["extra_paddings"], False, cfg["image_size"])


# arch (model.config["arch"]) -> family builder
FAMILIES = {"resnet": resnet_family, "vgg16": vgg16_family}
