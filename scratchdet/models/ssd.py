"""The SSD detector: backbone sources + extra layers + per-source loc/conf heads, with loss and detect.

Inference settings live in ``model.config`` (saved with the weights): the input spec
(``image_size``, ``mean``, ``std``, ``resize``) that :mod:`scratchdet.models.transform` uses, and
the detection settings (``score_threshold``, ``nms_threshold``, ``top_k``, ``keep_top_k``) that
:func:`scratchdet.ops.detect` uses.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import torch
import torch.nn as nn

from .. import ops
from ..structures.errors import ConfigError
from ..structures.image import as_hw
from ..structures.targets import as_padded_targets, check_target_labels
from .config import (DETECT_DEFAULTS, DETECT_FIELDS, INPUT_DEFAULTS, SSDConfig, check_detect_settings,
                     finite_number, whole_number)
from .families import FAMILIES, features_list, generic_parts, resolve_norms
from .layers import ConvNormAct, init_weights
from .loss import MultiBoxLoss
from .priors import source_prior_shapes, tile_priors
from .tiling import DEFAULT_OVERLAP, predict_tiled, tiling_plan
from .transform import postprocess, preprocess

__all__ = ["SSD", "SSDRawOutputs", "INPUT_DEFAULTS", "DETECT_DEFAULTS", "check_detect_settings",
           "finite_number", "whole_number", "predict_images"]


class SSD(nn.Module):
    """Single-shot detector. Build it with :func:`scratchdet.models.build_model` (a preset) or
    :meth:`SSD.from_config` (an :class:`~scratchdet.models.config.SSDConfig`).

    Attributes: ``config`` (the frozen :class:`SSDConfig` it was built from: ``SSD.from_config(config)``
    rebuilds this model; it also holds the input and detection settings), and, read from it,
    ``num_classes`` (background included), ``image_size`` (one side or (height, width), as
    configured), ``variances``; ``input_size`` (height, width), ``priors [P, 4]`` (cx, cy, w, h; a
    buffer), ``feature_sizes`` ((height, width) of every source, finest first).
    """

    def __init__(self, *, backbone: nn.Module, extras: nn.ModuleList, source_channels: Sequence[int],
                 feature_sizes: Sequence[tuple[int, int]], priors: torch.Tensor, anchors_per_location: Sequence[int],
                 config: SSDConfig):
        """The modules and their layout are explicit; every setting (classes, input size, norms,
        loss, input and detection settings) comes from the typed ``config``."""
        super().__init__()
        if not isinstance(config, SSDConfig):
            raise TypeError(f"SSD: config must be an SSDConfig, got {type(config).__name__}")
        sizes = [as_hw(s) for s in feature_sizes]
        if min(min(s) for s in sizes) < 1:
            raise ConfigError(f"input size {config.image_size} is too small for this layout: source sizes {sizes}")
        if not (len(anchors_per_location) == len(source_channels) == len(sizes)):
            raise ValueError(f"{len(source_channels)} sources with {len(sizes)} sizes and "
                             f"{len(anchors_per_location)} prior layouts")
        expected = sum(a * h * w for a, (h, w) in zip(anchors_per_location, sizes))
        if priors.shape[0] != expected:
            raise ValueError(f"{priors.shape[0]} priors for sources {sizes} that need {expected}")
        self._config = config
        head_norm = resolve_norms(config)[2]
        num_classes = config.num_classes
        self.backbone = backbone
        self.extras = extras
        self.feature_sizes = sizes
        self.register_buffer("priors", priors, persistent=False)
        self.anchors_per_location = list(anchors_per_location)
        self.loc_heads = nn.ModuleList(ConvNormAct(c, a * 4, 3, 1, norm=head_norm, act=False)
                                       for c, a in zip(source_channels, anchors_per_location))
        self.conf_heads = nn.ModuleList(ConvNormAct(c, a * num_classes, 3, 1, norm=head_norm, act=False)
                                        for c, a in zip(source_channels, anchors_per_location))
        self.criterion = MultiBoxLoss(config.iou_threshold, config.neg_pos_ratio, config.variances)
        self.background_prior = 0.0

    @classmethod
    def from_config(cls, config: SSDConfig, backbone: nn.Module | None = None) -> "SSD":
        """The SSD ``config`` describes, weights initialised from scratch: its backbone family's
        parts (``config.arch``), priors and heads. A ``"custom"`` config needs the user's
        ``backbone`` module (its class is recorded in ``config.backbone``)."""
        if not isinstance(config, SSDConfig):
            raise TypeError(f"SSD.from_config: expected an SSDConfig, got {type(config).__name__}")
        resolve_norms(config)                                  # a bad norm name fails before any module is built
        if config.arch not in FAMILIES:
            raise ConfigError(f"unknown arch {config.arch!r}; expected one of {sorted(FAMILIES)}")
        if backbone is not None:
            if config.arch != "custom":
                raise ConfigError(f"a backbone module was given for a config of arch {config.arch!r}; "
                                  "give it only with arch 'custom' (scratchdet.build_detector)")
            config = config.replace(backbone=f"{type(backbone).__module__}.{type(backbone).__qualname__}")
            parts = generic_parts(backbone, config)
        else:
            parts = FAMILIES[config.arch](config)
        num_sources = len(parts.channels)
        shapes = source_prior_shapes(config, num_sources)   # SSD's rule, or the fitted shapes (priors=auto)
        priors = tile_priors(config.image_size, parts.feature_sizes, shapes, clip=config.clip_priors)
        model = cls(backbone=parts.backbone, extras=parts.extras, source_channels=parts.channels,
                    feature_sizes=parts.feature_sizes, priors=priors,
                    anchors_per_location=[len(s) for s in shapes], config=config)
        # a timm or user backbone keeps its own initialisation (timm's is tuned per family)
        own = [model.backbone] if config.arch in ("resnet", "vgg16") else []
        for part in own + [model.extras, model.loc_heads, model.conf_heads]:
            init_weights(part, zero_init_residual=config.zero_init_residual)
        model.init_head(config.background_prior)
        return model

    # ------------------------------------------------------------------ settings, read from the config
    @property
    def config(self) -> SSDConfig:
        """The frozen :class:`SSDConfig` this model was built from (read-only)."""
        return self._config

    @property
    def num_classes(self) -> int:
        """Object classes + background."""
        return self._config.num_classes

    @property
    def image_size(self):
        """The input size as configured: one side, or (height, width)."""
        return self._config.image_size

    @property
    def variances(self) -> tuple[float, ...]:
        """The box encoding's (centre, size) variances."""
        return self._config.variances

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the network's input."""
        return as_hw(self.image_size)

    @property
    def input_spec(self) -> dict:
        """What :func:`scratchdet.models.transform.preprocess` needs: image_size, mean, std, resize."""
        return self._config.input_spec

    @property
    def detect_settings(self) -> dict:
        """The default ``score_threshold``, ``nms_threshold``, ``top_k`` and ``keep_top_k`` of :meth:`detect`."""
        return self._config.detect_settings

    def set_detect_settings(self, **settings) -> None:
        """Change the default detection settings (saved with the model); they never touch the
        weights, so unlike the rest of the config they may change after building. Checked:
        NaN, inf or out of range raise :class:`ConfigError` naming the setting."""
        unknown = sorted(set(settings) - set(DETECT_FIELDS))
        if unknown:
            raise TypeError(f"set_detect_settings: unknown setting(s) {unknown}; valid: {list(DETECT_FIELDS)}")
        self._config = dataclasses.replace(self._config, **settings)

    def init_head(self, background_prior: float = 0.99, std: float = 0.01) -> None:
        """Start the predictors near "everything is background" with small offsets.

        Without a norm layer, the loc/conf convs get N(0, ``std``) weights (a Kaiming
        init gives logits in the tens, and a first conf loss of ~30 per positive).
        The background logit's bias (conv bias, or the norm's beta) is
        set so that softmax gives ``background_prior`` to background on every
        prior (Lin et al., RetinaNet's prior init, for a softmax). From a uniform
        start, a small SSD sits for hundreds of iterations on the plateau where it
        predicts the class frequencies everywhere (mAP ~0); with the prior
        init it learns classes from the first iterations (measured: README).
        ``background_prior=0`` keeps the background bias at 0.
        """
        if not 0.0 <= background_prior < 1.0:
            raise ValueError(f"background_prior must be in [0, 1), got {background_prior}")
        C = self.num_classes
        for head in list(self.loc_heads) + list(self.conf_heads):
            if head.norm is None:
                nn.init.normal_(head.conv.weight, std=std)
                nn.init.zeros_(head.conv.bias)
        if background_prior > 0:
            logit = math.log(background_prior * (C - 1) / (1.0 - background_prior))
            with torch.no_grad():
                for head in self.conf_heads:
                    bias = head.conv.bias if head.norm is None else head.norm.bias
                    bias.view(-1, C)[:, 0] = logit        # channels are [anchor][class]
        self.background_prior = float(background_prior)

    # ------------------------------------------------------------------ network
    def forward_raw(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's raw outputs: ``loc [B, P, 4]`` offsets and ``logits [B, P, C]``."""
        feats = features_list(self.backbone(images))
        x = feats[-1]
        for layer in self.extras:
            x = layer(x)
            feats.append(x)
        B = images.shape[0]
        locs, confs = [], []
        for f, loc_head, conf_head in zip(feats, self.loc_heads, self.conf_heads):
            locs.append(loc_head(f).permute(0, 2, 3, 1).reshape(B, -1, 4))
            confs.append(conf_head(f).permute(0, 2, 3, 1).reshape(B, -1, self.num_classes))
        return torch.cat(locs, 1), torch.cat(confs, 1)

    def forward(self, images: torch.Tensor, targets=None):
        """With targets: the loss dict. Eval mode without targets: ``ops.detect`` output
        ``(boxes [B,K,4], scores [B,K], labels [B,K], num_detections [B])``, boxes normalised."""
        if targets is not None:
            return self.loss(images, targets)
        if self.training:
            raise ValueError("SSD.forward: training mode needs targets (call model.eval() for detections)")
        loc, logits = self.forward_raw(images)
        return self.detect(loc, logits)

    def loss(self, images: torch.Tensor, targets) -> dict[str, torch.Tensor]:
        """MultiBoxLoss of the batch; ``targets`` as :meth:`prepare_targets` accepts."""
        gt_boxes, gt_labels = self.prepare_targets(targets, images.device)
        loc, logits = self.forward_raw(images)
        return self.criterion(loc, logits, self.priors, gt_boxes, gt_labels)

    def detect(self, loc: torch.Tensor, logits: torch.Tensor, **overrides):
        """:func:`scratchdet.ops.detect` with this model's priors and detection settings
        (``overrides`` that are not None replace them for this call)."""
        return ops.detect(loc, logits, self.priors, self.variances, **self.resolve_detect_settings(**overrides))

    def resolve_detect_settings(self, **overrides) -> dict:
        """:attr:`detect_settings` with the ``overrides`` that are not None, checked
        (:func:`check_detect_settings`: NaN, inf or out of range raise :class:`ConfigError`)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = sorted(set(given) - set(DETECT_FIELDS))
        if unknown:
            raise TypeError(f"detect: unknown setting(s) {unknown}; valid: {list(DETECT_FIELDS)}")
        settings = {**self.detect_settings, **given}
        if given:                                     # the model's own settings were checked when it was built
            check_detect_settings(**settings)
        return settings

    def prepare_targets(self, targets, device) -> tuple[torch.Tensor, torch.Tensor]:
        """A padded batch dict ``{"boxes" [B,G,4], "labels" [B,G]}`` or a list of per-image
        dicts ``{"boxes" [M,4], "labels" [M]}`` -> padded ``(boxes, labels)`` on ``device``.
        Boxes are normalised (x1, y1, x2, y2); label 0 is padding. Labels are range-checked
        before the copy to ``device`` (pass CPU targets: the check is then free)."""
        boxes, labels = as_padded_targets(targets)
        check_target_labels(labels, self.num_classes)
        return boxes.to(device=device, dtype=torch.float32), labels.to(device=device, dtype=torch.int64)

    # ------------------------------------------------------------------ inference API
    def preprocess(self, images) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Images of any size -> ``(batch, sizes)`` with this model's input spec
        (:func:`scratchdet.models.transform.preprocess`), on the model's device and dtype."""
        batch, sizes = preprocess(images, **self.input_spec)
        return batch.to(device=self.priors.device, dtype=next(self.parameters()).dtype), sizes

    def postprocess(self, detections, sizes) -> list[dict]:
        """The ``forward`` (``detect``) output of a batch and each image's ``(width, height)`` ->
        detections in each image's own pixels (:func:`scratchdet.models.transform.postprocess`)."""
        return postprocess(detections, sizes)

    @torch.inference_mode()
    def predict(self, images, score_threshold: float | None = None, nms_threshold: float | None = None,
                top_k: int | None = None, keep_top_k: int | None = None, batch_size: int = 16,
                tile: int | None = None, tile_overlap: float = DEFAULT_OVERLAP,
                tile_whole_image: bool = False) -> list[dict]:
        """Detect objects in images of any size (PIL images, uint8 arrays, ``[3, H, W]`` tensors).

        Preprocessing and the default thresholds are the model's (``model.config``); a threshold
        given here overrides it for this call. Returns one dict per image: ``boxes [K, 4]``
        (x1, y1, x2, y2 in the image's own pixels), ``scores [K]``, ``labels [K]`` (1..C-1),
        best first. :class:`scratchdet.FastPredictor` has the same ``predict``, fused.

        ``tile``: detect in ``tile`` x ``tile`` windows at the image's native resolution, overlapping
        by the fraction ``tile_overlap``, merged by the edge rule and class-wise NMS
        (:mod:`scratchdet.models.tiling`); ``tile_whole_image`` adds the resized whole image's
        detections before the merge. An image no larger than a tile gives exactly the plain result.

        A threshold, count or tiling value that is NaN, infinite or out of range raises
        :class:`ConfigError` naming it, before any image is processed.
        """
        settings = self.resolve_detect_settings(score_threshold=score_threshold, nms_threshold=nms_threshold,
                                                top_k=top_k, keep_top_k=keep_top_k)
        tiling = tiling_plan(tile, tile_overlap, tile_whole_image, settings)
        was_training = self.training
        self.eval()
        try:
            def detect_batch(batch):
                loc, logits = self.forward_raw(batch)
                return self.detect(loc, logits, score_threshold=score_threshold, nms_threshold=nms_threshold,
                                   top_k=top_k, keep_top_k=keep_top_k)
            return predict_images(detect_batch, self.preprocess, images, batch_size, tiling)
        finally:
            self.train(was_training)


def predict_images(detect_batch: Callable, preprocess_fn: Callable, images, batch_size: int = 16,
                   tiling: dict | None = None) -> list[dict]:
    """The predict loop every predictor (``SSD``, ``FastPredictor``, the int8 predictor) shares:
    chunks of ``batch_size`` images -> ``preprocess_fn`` -> ``detect_batch`` -> :func:`postprocess`;
    with ``tiling`` (:func:`~scratchdet.models.tiling.tiling_plan`), each image's tiles go through
    that loop and are merged (:func:`~scratchdet.models.tiling.predict_tiled`)."""
    if tiling is not None:
        return predict_tiled(lambda crops: predict_images(detect_batch, preprocess_fn, crops, batch_size), images,
                             tiling["tile"], tiling["overlap"], tiling["nms_threshold"], tiling["keep_top_k"],
                             tiling["whole_image"])
    if not isinstance(images, (list, tuple)):
        images = [images]
    batch_size = whole_number("batch_size", batch_size, 1)
    results = []
    for start in range(0, len(images), batch_size):
        batch, sizes = preprocess_fn(images[start:start + batch_size])
        results += postprocess(detect_batch(batch), sizes)
    return results


class SSDRawOutputs(nn.Module):
    """Wraps an SSD so that ``forward(images) -> (loc, logits)``: the module to hand to torch.export / ONNX."""

    def __init__(self, model: SSD):
        super().__init__()
        self.model = model
        self.training = model.training          # export sees the wrapped model's mode

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_raw(images)
