"""Model presets and ``build_model``.

A preset is a description and the :class:`~scratchdet.models.config.SSDConfig` fields that differ
from the defaults. ``build_model(name, num_classes, **overrides)`` fills in the preset, applies the
overrides and builds ``SSD.from_config`` of the resolved, checked config, which the model keeps as
``model.config``; ``build_model(**model.config)`` (or ``SSD.from_config(model.config)``) rebuilds
the same model, its input and detection settings included.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from ..structures.errors import ConfigError
from .config import SSDConfig
from .search_space import is_root_resnet_spec, root_resnet_args
from .ssd import SSD

__all__ = ["Preset", "MODEL_PRESETS", "build_model", "build_detector", "list_models", "describe_model",
           "resolve_config"]

# what a timm or user backbone starts from: SSD's scale rule for the priors
_GENERIC = dict(prior_sizes="ssd")


@dataclass(frozen=True)
class Preset:
    """A named model: what it is, and the :class:`SSDConfig` fields that differ from the defaults."""
    description: str
    args: dict


MODEL_PRESETS: dict[str, Preset] = {
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
    return sorted(MODEL_PRESETS)


def describe_model(name: str) -> str:
    """One line on what the preset ``name`` is."""
    if name not in MODEL_PRESETS:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return MODEL_PRESETS[name].description


def resolve_config(name: str, **overrides) -> SSDConfig:
    """The checked :class:`SSDConfig` of preset ``name`` (or ``"timm:<model>"``, ``"custom"``) with
    ``overrides`` applied, without building the model. An unknown override raises ``TypeError``;
    a bad value :class:`ConfigError` naming it."""
    if name.startswith("timm:"):
        base = {**_GENERIC, "arch": "timm", "timm_model": name[len("timm:"):]}
    elif is_root_resnet_spec(name):          # root_resnet:w=16,d=1-1-1-1,... (models/search_space.py)
        base = root_resnet_args(name)
    elif name == "custom":
        base = {**_GENERIC, "arch": "custom"}
    elif name in MODEL_PRESETS:
        base = MODEL_PRESETS[name].args
    else:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(list_models())}, or timm:<name> "
                          "for any timm backbone")
    valid = set(SSDConfig.field_names()) - {"name"}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise TypeError(f"build_model: unknown argument(s) {unknown}; valid: {sorted(valid)}")
    return SSDConfig(**{**base, **overrides, "name": name})


def build_model(name: str, num_classes: int | None = None, **overrides) -> SSD:
    """Build the preset ``name`` (or ``"timm:<model>"``: any timm backbone, random weights) with
    ``num_classes`` (background included; default 21 = VOC) and any :class:`SSDConfig` field
    overridden."""
    overrides.pop("backbone", None)              # a custom model's record of its backbone class
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    return SSD.from_config(resolve_config(name, **overrides))


def build_detector(backbone: nn.Module, num_classes: int = 21, **options) -> SSD:
    """An SSD around any backbone, trained from scratch: ``backbone`` is an ``nn.Module`` whose
    forward returns a list (or dict) of feature maps, finest first.

    Its channels and strides are probed once with a dummy input of ``image_size``; the SSD extra
    layers continue the pyramid down to 1x1 (``extras="residual"`` or ``"ssd"``,
    ``extra_channels``, ``num_extras``); the priors follow SSD's scale rule (``s_min``, ``s_max``,
    ``aspect_ratios``) with the source strides as steps. ``norm`` / ``backbone_norm`` converts
    the backbone's BatchNorms in place. Any other :class:`SSDConfig` field applies.
    Save with ``scratchdet.save``; load with ``scratchdet.load(path, backbone=<a new instance>)``.
    """
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"build_detector: expected an nn.Module backbone, got {type(backbone).__name__}")
    options.pop("backbone", None)
    options.pop("arch", None)
    return SSD.from_config(resolve_config("custom", num_classes=num_classes, **options), backbone=backbone)
