"""The SSD detector: backbone sources + extra layers + per-source loc/conf heads, with loss and detect.

Inference settings live in ``model.config`` (saved with the weights): the input spec
(``image_size``, ``mean``, ``std``, ``resize``) that :mod:`scratchdet.models.transform` uses, and
the detection settings (``score_threshold``, ``nms_threshold``, ``top_k``, ``keep_top_k``) that
:func:`scratchdet.ops.detect` uses.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn as nn

from .. import ops
from ..constants import MEAN, STD
from ..structures.errors import ConfigError
from ..structures.image import as_hw
from ..structures.targets import as_padded_targets, check_target_labels
from .families import features_list
from .layers import ConvNormAct
from .loss import MultiBoxLoss
from .transform import postprocess, preprocess

__all__ = ["SSD", "SSDRawOutputs", "INPUT_DEFAULTS", "DETECT_DEFAULTS", "check_detect_settings",
           "finite_number", "whole_number", "predict_images"]

INPUT_DEFAULTS = dict(mean=MEAN, std=STD, resize="bilinear")
DETECT_DEFAULTS = dict(score_threshold=0.01, nms_threshold=0.45, top_k=400, keep_top_k=200)


def finite_number(name: str, value) -> float:
    """``value`` as a float; :class:`ConfigError` naming ``name`` if it is not a number, NaN or infinite."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number):
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


class SSD(nn.Module):
    """Single-shot detector. Build it through :func:`scratchdet.models.build_model`.

    Attributes: ``priors [P, 4]`` (cx, cy, w, h; a buffer), ``num_classes``
    (background included), ``config`` (a plain dict: ``build_model(**config)``
    rebuilds this model; it also holds the input and detection settings),
    ``image_size`` (one side or (height, width), as configured), ``input_size``
    (height, width), ``feature_sizes`` ((height, width) of every source, finest first).
    """

    def __init__(self, *, backbone: nn.Module, extras: nn.ModuleList, source_channels: Sequence[int],
                 feature_sizes: Sequence, priors: torch.Tensor, anchors_per_location: Sequence[int],
                 num_classes: int, image_size, head_norm: str, config: dict, variances=(0.1, 0.2),
                 iou_threshold: float = 0.5, neg_pos_ratio: float = 3.0):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background and must be >= 2, got {num_classes}")
        sizes = [as_hw(s) for s in feature_sizes]
        if min(min(s) for s in sizes) < 1:
            raise ValueError(f"input size {image_size} is too small for this layout: source sizes {sizes}")
        if not (len(anchors_per_location) == len(source_channels) == len(sizes)):
            raise ValueError(f"{len(source_channels)} sources with {len(sizes)} sizes and "
                             f"{len(anchors_per_location)} prior layouts")
        expected = sum(a * h * w for a, (h, w) in zip(anchors_per_location, sizes))
        if priors.shape[0] != expected:
            raise ValueError(f"{priors.shape[0]} priors for sources {sizes} that need {expected}")
        self.backbone = backbone
        self.extras = extras
        self.num_classes = int(num_classes)
        self.image_size = tuple(image_size) if isinstance(image_size, (list, tuple)) else int(image_size)
        self.config = dict(config)
        for key, value in {**INPUT_DEFAULTS, **DETECT_DEFAULTS}.items():   # a config from before these settings
            self.config.setdefault(key, value)
        self.variances = tuple(float(v) for v in variances)
        self.feature_sizes = sizes
        self.register_buffer("priors", priors, persistent=False)
        self.anchors_per_location = list(anchors_per_location)
        self.loc_heads = nn.ModuleList(ConvNormAct(c, a * 4, 3, 1, norm=head_norm, act=False)
                                       for c, a in zip(source_channels, anchors_per_location))
        self.conf_heads = nn.ModuleList(ConvNormAct(c, a * num_classes, 3, 1, norm=head_norm, act=False)
                                        for c, a in zip(source_channels, anchors_per_location))
        self.criterion = MultiBoxLoss(iou_threshold, neg_pos_ratio, variances)
        self.background_prior = 0.0

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the network's input."""
        return as_hw(self.image_size)

    @property
    def input_spec(self) -> dict:
        """What :func:`scratchdet.models.transform.preprocess` needs: image_size, mean, std, resize."""
        return {"image_size": self.image_size, **{k: self.config[k] for k in INPUT_DEFAULTS}}

    @property
    def detect_settings(self) -> dict:
        """The default ``score_threshold``, ``nms_threshold``, ``top_k`` and ``keep_top_k`` of :meth:`detect`."""
        return {k: self.config[k] for k in DETECT_DEFAULTS}

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
        unknown = sorted(set(given) - set(DETECT_DEFAULTS))
        if unknown:
            raise TypeError(f"detect: unknown setting(s) {unknown}; valid: {sorted(DETECT_DEFAULTS)}")
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
                top_k: int | None = None, keep_top_k: int | None = None, batch_size: int = 16) -> list[dict]:
        """Detect objects in images of any size (PIL images, uint8 arrays, ``[3, H, W]`` tensors).

        Preprocessing and the default thresholds are the model's (``model.config``); a threshold
        given here overrides it for this call. Returns one dict per image: ``boxes [K, 4]``
        (x1, y1, x2, y2 in the image's own pixels), ``scores [K]``, ``labels [K]`` (1..C-1),
        best first. :class:`scratchdet.FastPredictor` has the same ``predict``, fused.

        A threshold or count that is NaN, infinite or out of range raises :class:`ConfigError`
        naming it, before any image is processed.
        """
        self.resolve_detect_settings(score_threshold=score_threshold, nms_threshold=nms_threshold, top_k=top_k,
                                     keep_top_k=keep_top_k)
        was_training = self.training
        self.eval()
        try:
            def detect_batch(batch):
                loc, logits = self.forward_raw(batch)
                return self.detect(loc, logits, score_threshold=score_threshold, nms_threshold=nms_threshold,
                                   top_k=top_k, keep_top_k=keep_top_k)
            return predict_images(detect_batch, self.preprocess, images, batch_size)
        finally:
            self.train(was_training)


def predict_images(detect_batch: Callable, preprocess_fn: Callable, images, batch_size: int = 16) -> list[dict]:
    """The predict loop ``SSD.predict`` and ``FastPredictor.predict`` share: chunks of
    ``batch_size`` images -> ``preprocess_fn`` -> ``detect_batch`` -> :func:`postprocess`."""
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
