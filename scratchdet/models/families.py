"""Backbone families: each builds its backbone and its own SSD extra layers, and reports the
channels and sizes of every source once (the SSD, its priors and its heads are laid out from them).

- ``resnet``, ``vgg16``: the paper's networks, laid out analytically.
- ``timm``: any timm model created with ``features_only=True, pretrained=False``.
- ``custom``: a user's ``nn.Module`` whose forward returns a list (or dict) of feature maps,
  finest first (:func:`scratchdet.build_detector`).

The last two are probed once with a dummy input of the model's size, and the SSD extra layers
continue their pyramid down to 1x1.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn

from .backbones import RESNET_BLOCKS, ResNetBackbone, VGG16Backbone
from .extras import extra_out_size, residual_extras, vgg_extras
from .layers import BasicBlock, ConvNormAct, check_norm, convert_norms
from ..structures.image import as_hw

__all__ = ["SSDParts", "FAMILIES", "resolve_norms", "generic_parts", "probe_features"]


@dataclass
class SSDParts:
    """What a backbone family hands the SSD: the modules, and per source (finest first) its channels
    and its (height, width) at the model's input size."""
    backbone: nn.Module
    extras: nn.ModuleList
    channels: list[int]
    feature_sizes: list[tuple[int, int]]


def resolve_norms(cfg: Mapping) -> tuple[str, str, str]:
    """(backbone, extras, head) normalisation: ``backbone_norm`` / ``extra_norm`` / ``head_norm``
    first, then ``norm``, then the paper presets' ``bn_backbone`` / ``bn_head`` switches (the
    extras follow the backbone)."""
    backbone = cfg.get("backbone_norm") or cfg.get("norm") or ("bn" if cfg.get("bn_backbone", True) else "none")
    extra = cfg.get("extra_norm") or cfg.get("norm") or backbone
    head = cfg.get("head_norm") or cfg.get("norm") or ("bn" if cfg.get("bn_head", True) else "none")
    for value, what in ((backbone, "backbone_norm"), (extra, "extra_norm"), (head, "head_norm")):
        check_norm(value, what)
    return backbone, extra, head


def _with_extras(backbone, extras: nn.ModuleList, extra_channels, paddings, residual: bool,
                 image_size) -> SSDParts:
    sizes = [as_hw(s) for s in backbone.feature_sizes(image_size)]
    for p in paddings:
        h, w = sizes[-1]
        sizes.append((extra_out_size(h, p, residual), extra_out_size(w, p, residual)))
    return SSDParts(backbone, extras, list(backbone.out_channels) + list(extra_channels), sizes)


def resnet_family(cfg: Mapping) -> SSDParts:
    """ResNet / Root-ResNet backbone with residual extras (128 channels, stride 2)."""
    blocks = cfg["blocks"] or RESNET_BLOCKS.get(cfg["depth"])
    if blocks is None:
        raise ValueError(f"depth must be one of {sorted(RESNET_BLOCKS)} (or give blocks), got {cfg['depth']}")
    backbone_norm, extra_norm, _ = resolve_norms(cfg)
    if as_hw(cfg["image_size"])[0] != as_hw(cfg["image_size"])[1]:
        raise ValueError(f"the {cfg['arch']} presets are square; for a non-square input use "
                         "scratchdet.build_detector or a timm backbone")
    backbone = ResNetBackbone(blocks, cfg["stem"], cfg["width"], cfg["source_stages"], norm=backbone_norm,
                              root_width=cfg["root_width"], root_stride=cfg.get("root_stride", 1))
    extras = residual_extras(backbone.out_channels[-1], cfg["extra_channels"], cfg["extra_paddings"], norm=extra_norm)
    return _with_extras(backbone, extras, [cfg["extra_channels"]] * len(cfg["extra_paddings"]),
                        cfg["extra_paddings"], True, as_hw(cfg["image_size"])[0])


def vgg16_family(cfg: Mapping) -> SSDParts:
    """SSD's VGG16 (conv4_3 through L2Norm, fc7) with SSD's plain extras."""
    backbone_norm, extra_norm, _ = resolve_norms(cfg)
    if as_hw(cfg["image_size"])[0] != as_hw(cfg["image_size"])[1]:
        raise ValueError("the vgg16 preset is square; for a non-square input use scratchdet.build_detector")
    backbone = VGG16Backbone(norm=backbone_norm, width=cfg["width"])
    extras = vgg_extras(backbone.out_channels[-1], cfg["extra_paddings"], norm=extra_norm, scale=cfg["width"] / 64)
    return _with_extras(backbone, extras, [layer[-1].conv.out_channels for layer in extras],
                        cfg["extra_paddings"], False, as_hw(cfg["image_size"])[0])


# ------------------------------------------------------------------ any backbone
def features_list(out) -> list[torch.Tensor]:
    """A backbone's output (a list, tuple or dict of feature maps) as a list, finest first."""
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, torch.Tensor):
        out = [out]
    if not isinstance(out, (list, tuple)) or not out or not all(isinstance(t, torch.Tensor) for t in out):
        raise TypeError("a backbone must return a list (or dict) of feature maps [B, C, H, W], finest first; "
                        f"got {type(out).__name__}")
    return list(out)


@torch.no_grad()
def probe_features(module: nn.Module, image_size) -> tuple[list[int], list[tuple[int, int]]]:
    """Channels and (h, w) of every feature map ``module`` returns for one input of ``image_size``
    (run once in eval mode on zeros, on the module's device; the modes are restored)."""
    h, w = as_hw(image_size)
    param = next(module.parameters(), None)
    device = param.device if param is not None else "cpu"
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        feats = features_list(module(torch.zeros(1, 3, h, w, device=device)))
    finally:
        for m, mode in modes.items():
            m.training = mode
    if any(f.dim() != 4 for f in feats):
        raise ValueError(f"backbone feature maps must be [B, C, H, W], got shapes {[list(f.shape) for f in feats]}")
    sizes = [(f.shape[2], f.shape[3]) for f in feats]
    if any(a[0] < b[0] or a[1] < b[1] for a, b in zip(sizes, sizes[1:])):
        raise ValueError(f"backbone feature maps must come finest first, got sizes {sizes} at input {h}x{w}")
    return [f.shape[1] for f in feats], sizes


def _extra_paddings(last: tuple[int, int], num_extras: int | None) -> list[int]:
    """Paddings of the extra layers after a source of size ``last``: halve (padding 1) until 1x1,
    except 3x3 -> 1x1 in one valid 3x3 (padding 0), as SSD300's last layer."""
    paddings, (h, w) = [], last
    while (h, w) != (1, 1) if num_extras is None else len(paddings) < num_extras:
        p = 0 if (h, w) == (3, 3) else 1
        paddings.append(p)
        h, w = extra_out_size(h, p, True), extra_out_size(w, p, True)
    return paddings


def generic_extras(in_channels: int, channels, paddings, kind: str, norm: str) -> tuple[nn.ModuleList, list[int]]:
    """Extra layers of the given kind: "residual" (Root-ResNet's stride-2 BasicBlocks) or "ssd"
    (SSD's 1x1 reduce + 3x3 stride-2, or a valid 3x3 for the last 3x3 -> 1x1)."""
    if isinstance(channels, int):
        channels = [channels] * len(paddings)
    if len(channels) != len(paddings):
        raise ValueError(f"extra_channels has {len(channels)} entries for {len(paddings)} extra layers")
    layers = []
    for c, p in zip(channels, paddings):
        if kind == "residual":
            layers.append(BasicBlock(in_channels, c, stride=2, norm=norm, padding=p))
        elif kind == "ssd":
            layers.append(nn.Sequential(ConvNormAct(in_channels, max(c // 2, 1), 1, 1, norm=norm),
                                        ConvNormAct(max(c // 2, 1), c, 3, 2 if p == 1 else 1, padding=p, norm=norm)))
        else:
            raise ValueError(f"extras must be 'residual' or 'ssd', got {kind!r}")
        in_channels = c
    return nn.ModuleList(layers), list(channels)


def generic_parts(backbone: nn.Module, cfg: Mapping) -> SSDParts:
    """Any backbone: its norms converted in place, probed once, extras down to 1x1 (or ``num_extras``)."""
    backbone_norm, extra_norm, _ = resolve_norms(cfg)
    convert_norms(backbone, backbone_norm)
    channels, sizes = probe_features(backbone, cfg["image_size"])
    paddings = _extra_paddings(sizes[-1], cfg["num_extras"])
    extras, extra_channels = generic_extras(channels[-1], cfg["extra_channels"], paddings, cfg["extras"], extra_norm)
    for p in paddings:
        h, w = sizes[-1]
        sizes.append((extra_out_size(h, p, True), extra_out_size(w, p, True)))
    if min(min(s) for s in sizes) < 1:
        raise ValueError(f"input {cfg['image_size']} is too small for this backbone: source sizes {sizes}")
    return SSDParts(backbone, extras, channels + extra_channels, sizes)


def timm_family(cfg: Mapping) -> SSDParts:
    """A timm model with ``features_only=True, pretrained=False``; its levels with a stride of at
    least ``min_source_stride`` are the sources."""
    try:
        import timm
    except ImportError:
        raise ImportError(f"model 'timm:{cfg['timm_model']}' needs timm: pip install 'scratchdet[timm]' "
                          "(or pip install timm)") from None
    name = cfg["timm_model"]
    if not name or not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r} (see timm.list_models())")
    backbone = timm.create_model(name, features_only=True, pretrained=False)
    reductions = backbone.feature_info.reduction()
    keep = [i for i, r in enumerate(reductions) if r >= cfg["min_source_stride"]]
    if not keep:
        raise ValueError(f"timm model {name!r} has no feature level with a stride >= {cfg['min_source_stride']} "
                         f"(its strides: {reductions}); lower min_source_stride")
    if len(keep) < len(reductions):
        backbone = timm.create_model(name, features_only=True, pretrained=False, out_indices=tuple(keep))
    return generic_parts(backbone, cfg)


def custom_family(cfg: Mapping) -> SSDParts:
    raise ValueError(f"this model was built around a user backbone ({cfg.get('backbone') or 'an nn.Module'}): "
                     "rebuild it with scratchdet.build_detector(backbone, ...), or load it with "
                     "scratchdet.load(path, backbone=<the module>)")


# arch (model.config.arch) -> family builder
FAMILIES = {"resnet": resnet_family, "vgg16": vgg16_family, "timm": timm_family, "custom": custom_family}
