"""The model's configuration: one frozen, typed record, :class:`SSDConfig`.

``build_model(name, num_classes, **overrides)`` resolves a preset into an ``SSDConfig``;
``SSD.from_config(cfg)`` builds the network from it and keeps it as ``model.config``
(read-only: change a setting with ``dataclasses.replace`` and build again, or, for the
detection settings, ``model.set_detect_settings``). ``scratchdet.save`` writes it as a plain
dict of its fields (:meth:`SSDConfig.to_dict`) and ``scratchdet.load`` reads it back
(:meth:`SSDConfig.from_dict`, which fills fields an older file lacks with their defaults).

Every field is checked when the record is made: a wrong type, a NaN or infinite float, or a value
out of range raises :class:`~scratchdet.structures.errors.ConfigError` naming the field. The
record also reads like a mapping (``cfg["image_size"]``, ``cfg.get(...)``, ``dict(cfg)``,
``build_model(**cfg)``) for code written against the earlier plain-dict config.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Tuple, Union, get_args, get_origin, get_type_hints

from ..constants import MEAN, STD
from ..structures.errors import ConfigError
from ..structures.image import check_input_spec

__all__ = ["SSDConfig", "INPUT_FIELDS", "DETECT_FIELDS", "INPUT_DEFAULTS", "DETECT_DEFAULTS",
           "finite_number", "whole_number", "check_detect_settings"]

# What preprocessing needs besides image_size, and what scratchdet.ops.detect takes: both are
# inference settings, saved with the model, that never change the weights.
INPUT_FIELDS = ("mean", "std", "resize")
DETECT_FIELDS = ("score_threshold", "nms_threshold", "top_k", "keep_top_k")


def finite_number(name: str, value) -> float:
    """``value`` as a float; :class:`ConfigError` naming ``name`` if it is not a number, NaN or infinite."""
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return number


def whole_number(name: str, value, minimum: int) -> int:
    """``value`` as an int >= ``minimum``; :class:`ConfigError` naming ``name`` otherwise (NaN, inf, 2.5)."""
    number = finite_number(name, value)
    if not number.is_integer() or number < minimum:
        raise ConfigError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(number)


def check_detect_settings(score_threshold, nms_threshold, top_k, keep_top_k) -> None:
    """Raise :class:`ConfigError` (a ``ValueError``) naming the setting for detection settings
    ``scratchdet.ops.detect`` would refuse or misread: NaN, inf, a fraction where a count goes."""
    finite_number("score_threshold", score_threshold)
    if not 0.0 <= finite_number("nms_threshold", nms_threshold) <= 1.0:
        raise ConfigError(f"nms_threshold must be in [0, 1], got {nms_threshold!r}")
    whole_number("top_k", top_k, 1)
    whole_number("keep_top_k", keep_top_k, 1)


IntTuple = Tuple[int, ...]


@dataclass(frozen=True)
class SSDConfig(Mapping):
    """Everything that defines an SSD: architecture, priors, loss, input spec, detection settings.

    ``SSDConfig()`` is the defaults; a preset (``scratchdet.models.MODEL_PRESETS``) lists the fields
    it changes. Lists given for tuple fields are stored as tuples.
    """
    name: str = ""                         # the preset (or "timm:<model>", "custom") it was built from
    arch: str = "resnet"                   # a backbone family (models/families.py): resnet, vgg16, timm, custom
    depth: int = 18                        # ResNet depth (18 or 34) when blocks is None
    blocks: Optional[IntTuple] = None      # BasicBlocks per stage, overrides depth
    stem: str = "root"                     # "a", "b", "c" (the paper's ResNet-18 ablations) or "root"
    width: int = 64                        # channels of the first stage (VGG: of conv1)
    root_width: Optional[int] = None       # channels of the Root-ResNet root block (default: width)
    root_stride: int = 1                   # stride of the root block's first conv (2: half-resolution root, cheaper)
    timm_model: str = ""                   # arch "timm": the timm model name (model name "timm:<name>")
    min_source_stride: int = 8             # arch "timm": its feature levels with at least this stride are sources
    extras: str = "residual"               # timm / custom: extra layers "residual" (Root-ResNet's) or "ssd" (SSD's)
    num_extras: Optional[int] = None       # timm / custom: how many extra layers (None: down to 1x1)
    extra_channels: Union[int, IntTuple] = 128   # channels of the extra layers (one int, or one per layer)
    source_stages: IntTuple = (3, 4)       # ResNet stages used as sources (1-based)
    extra_paddings: IntTuple = (1, 1, 1, 0)  # resnet / vgg16: one extra layer each: 1 halves the size, 0 takes 3 -> 1
    norm: Optional[str] = None             # "bn", "syncbn", "gn" or "none" for backbone, extras and head at once
    backbone_norm: Optional[str] = None    # ... or each (these win over norm, which wins over bn_backbone / bn_head)
    extra_norm: Optional[str] = None
    head_norm: Optional[str] = None
    bn_backbone: bool = True               # the paper's switches: BN in backbone (and extras) / in the head
    bn_head: bool = True
    image_size: Union[int, IntTuple] = 300   # one side, or (height, width)
    prior_sizes: str = "voc"               # "voc" or "coco" (docs/DESIGN.md, scaled to the input), or "ssd": SSD's
    s_min: float = 0.2                     # ... scale rule s_k = s_min + (s_max - s_min)(k - 1)/(m - 1)
    s_max: float = 0.9
    aspect_ratios: Optional[Tuple[Tuple[float, ...], ...]] = None  # per source; None: SSD300's pattern
    # per source, one location's prior shapes as flat normalised (w, h, w, h, ...), fitted to the
    # training boxes by `priors=auto` (models/prior_fit.py); None: the sizes and aspect ratios above
    prior_shapes: Optional[Tuple[Tuple[float, ...], ...]] = None
    clip_priors: bool = False
    variances: Tuple[float, ...] = (0.1, 0.2)    # of the box encoding (centre, size)
    iou_threshold: float = 0.5
    neg_pos_ratio: float = 3.0
    zero_init_residual: bool = False
    background_prior: float = 0.99         # initial softmax probability of background on every prior (0: off)
    num_classes: int = 21                  # object classes + background
    mean: Tuple[float, ...] = MEAN         # preprocessing (scratchdet.structures.image): normalise with mean, std
    std: Tuple[float, ...] = STD
    resize: str = "bilinear"               # the resampling filter (scratchdet.structures.image.RESIZE_FILTERS)
    score_threshold: float = 0.01          # detection settings (scratchdet.ops.detect)
    nms_threshold: float = 0.45
    top_k: int = 400
    keep_top_k: int = 200
    backbone: Optional[str] = None         # arch "custom": the user backbone's class, "module.QualName"

    def __post_init__(self):
        hints = _hints()
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))
        self._validate()

    def _validate(self) -> None:
        check_input_spec(self.image_size, self.mean, self.std, self.resize)
        check_detect_settings(self.score_threshold, self.nms_threshold, self.top_k, self.keep_top_k)
        if self.num_classes < 2:
            raise ConfigError(f"num_classes counts the background and must be >= 2, got {self.num_classes}")
        if not 0.0 <= self.background_prior < 1.0:
            raise ConfigError(f"background_prior must be in [0, 1), got {self.background_prior}")
        if not 0.0 < self.s_min <= self.s_max <= 1.0:
            raise ConfigError(f"expected 0 < s_min <= s_max <= 1, got s_min={self.s_min}, s_max={self.s_max}")
        if len(self.variances) != 2 or min(self.variances) <= 0:
            raise ConfigError(f"variances must be two positive numbers (centre, size), got {self.variances}")
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ConfigError(f"iou_threshold must be in (0, 1], got {self.iou_threshold}")
        if self.neg_pos_ratio <= 0:
            raise ConfigError(f"neg_pos_ratio must be positive, got {self.neg_pos_ratio}")
        if self.root_stride not in (1, 2):
            raise ConfigError(f"root_stride must be 1 or 2, got {self.root_stride}")
        for name in ("depth", "width", "min_source_stride"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("root_width", "num_extras"):
            value = getattr(self, name)
            if value is not None and value < (1 if name == "root_width" else 0):
                raise ConfigError(f"{name} must be positive, got {value}")
        channels = self.extra_channels if isinstance(self.extra_channels, tuple) else (self.extra_channels,)
        if min(channels, default=1) < 1:
            raise ConfigError(f"extra_channels must be positive, got {self.extra_channels}")
        if self.aspect_ratios is not None and any(r <= 0 for ars in self.aspect_ratios for r in ars):
            raise ConfigError(f"aspect_ratios must be positive, got {self.aspect_ratios}")
        if self.prior_shapes is not None and any(len(flat) % 2 or not flat or min(flat) <= 0
                                                 for flat in self.prior_shapes):
            raise ConfigError(f"prior_shapes must hold, per source, positive (w, h) pairs, got {self.prior_shapes}")
        if self.extras not in ("residual", "ssd"):
            raise ConfigError(f"extras must be 'residual' or 'ssd', got {self.extras!r}")

    # ---- plain data, for files
    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (tuples, numbers, strings, None): what ``scratchdet.save`` writes."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: Mapping) -> "SSDConfig":
        """The record from a plain dict (a saved model's config): fields it lacks take their
        defaults (a file from before a field existed); an unknown key raises :class:`ConfigError`."""
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ConfigError(f"unknown model config field(s) {unknown}")
        return cls(**values)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **changes) -> "SSDConfig":
        """``dataclasses.replace``: a checked copy with ``changes``; an unknown name raises ``TypeError``."""
        unknown = sorted(set(changes) - set(self.field_names()))
        if unknown:
            raise TypeError(f"unknown model config field(s) {unknown}; valid: {sorted(self.field_names())}")
        return dataclasses.replace(self, **changes)

    @property
    def input_spec(self) -> dict[str, Any]:
        """What preprocessing needs: ``image_size``, ``mean``, ``std``, ``resize``."""
        return {"image_size": self.image_size, **{k: getattr(self, k) for k in INPUT_FIELDS}}

    @property
    def detect_settings(self) -> dict[str, Any]:
        """``score_threshold``, ``nms_threshold``, ``top_k``, ``keep_top_k``."""
        return {k: getattr(self, k) for k in DETECT_FIELDS}

    # ---- read like the former plain dict
    def __getitem__(self, key: str):
        if key not in self.field_names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.field_names())

    def __len__(self) -> int:
        return len(self.field_names())


_HINTS: dict = {}


def _hints() -> dict:
    if not _HINTS:
        _HINTS.update(get_type_hints(SSDConfig))
    return _HINTS


def _coerce(name: str, value, hint):
    """``value`` in the shape ``hint`` describes (lists -> tuples, integral floats -> int, ints ->
    float), or :class:`ConfigError` naming the field."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options:
            try:
                return _coerce(name, value, option)
            except ConfigError:
                if len(options) == 1:
                    raise
        raise ConfigError(f"{name} must be {' or '.join(_describe(a) for a in args)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be {_describe(hint)}, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(f"{name}[{i}]", v, args[0]) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{name} must be {_describe(hint)}, got {value!r}")
        return tuple(_coerce(f"{name}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be True or False, got {value!r}")
    if hint is int:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            number = finite_number(name, value)
            if number.is_integer():
                return int(number)
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    if hint is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return finite_number(name, value)
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{name} must be a string, got {value!r}")
    raise TypeError(f"SSDConfig: no rule for field {name} of type {hint}")   # a bug in this module


def _describe(hint) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if hint is type(None):
        return "None"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return "a list of " + ("lists" if get_origin(args[0]) is tuple else _PLURAL.get(args[0], str(args[0])))
        return f"{len(args)} values"
    return _SINGULAR.get(hint, str(hint))


_SINGULAR = {int: "a whole number", float: "a finite number", str: "a string", bool: "True or False"}
_PLURAL = {int: "whole numbers", float: "numbers", str: "strings", bool: "booleans"}


INPUT_DEFAULTS = {k: getattr(SSDConfig, k) for k in INPUT_FIELDS}
DETECT_DEFAULTS = {k: getattr(SSDConfig, k) for k in DETECT_FIELDS}
