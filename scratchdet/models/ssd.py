"""The SSD detector: backbone sources + extra layers + per-source loc/conf heads, with loss and detect."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..constants import MEAN, STD
from .layers import BasicBlock, ConvBNAct
from .loss import MultiBoxLoss

__all__ = ["SSD", "SSDRawOutputs", "residual_extras", "vgg_extras"]


def residual_extras(in_channels: int, channels: int, paddings: Sequence[int], bn: bool = True) -> nn.ModuleList:
    """The ResNet family's extra layers: one stride-2 BasicBlock per extra source.

    Padding 1 halves the size (19 -> 10 -> 5 -> 3); padding 0 takes 3 -> 1.
    """
    layers = []
    for p in paddings:
        layers.append(BasicBlock(in_channels, channels, stride=2, bn=bn, padding=p))
        in_channels = channels
    return nn.ModuleList(layers)


def vgg_extras(in_channels: int, paddings: Sequence[int] = (1, 1, 0, 0), bn: bool = True,
               scale: float = 1.0) -> nn.ModuleList:
    """SSD300's VGG extras: 1x1 reduce then 3x3 (stride 2 with padding 1, else stride 1 valid)."""
    spec = [(256, 512), (128, 256), (128, 256), (128, 256)]
    layers = []
    for (mid, out), p in zip(spec, paddings):
        mid, out = int(round(mid * scale)), int(round(out * scale))
        layers.append(nn.Sequential(ConvBNAct(in_channels, mid, 1, 1, bn=bn),
                                    ConvBNAct(mid, out, 3, 2 if p == 1 else 1, padding=p, bn=bn)))
        in_channels = out
    return nn.ModuleList(layers)


def _extra_out_size(n: int, padding: int, residual: bool) -> int:
    stride = 2 if (residual or padding == 1) else 1
    return (n + 2 * padding - 3) // stride + 1


class SSD(nn.Module):
    """Single-shot detector. Build it through :func:`scratchdet.models.build_model`.

    Attributes: ``priors [P, 4]`` (cx, cy, w, h; a buffer), ``num_classes``
    (background included), ``config`` (a plain dict: ``build_model(**config)``
    rebuilds this model), ``image_size``, ``feature_sizes``.
    """

    def __init__(self, backbone: nn.Module, extras: nn.ModuleList, extra_channels: Sequence[int],
                 extra_paddings: Sequence[int], residual_extras: bool, num_classes: int, image_size: int,
                 priors: torch.Tensor, anchors_per_location: Sequence[int], bn_head: bool, config: dict,
                 variances=(0.1, 0.2), iou_threshold: float = 0.5, neg_pos_ratio: float = 3.0,
                 detect_cfg: dict | None = None):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background and must be >= 2, got {num_classes}")
        self.backbone = backbone
        self.extras = extras
        self.num_classes = int(num_classes)
        self.image_size = int(image_size)
        self.config = config
        self.variances = tuple(float(v) for v in variances)
        channels = list(backbone.out_channels) + list(extra_channels)
        sizes = list(backbone.feature_sizes(image_size))
        for p in extra_paddings:
            sizes.append(_extra_out_size(sizes[-1], p, residual_extras))
        if min(sizes) < 1:
            raise ValueError(f"input size {image_size} is too small for this layout: source sizes {sizes}")
        self.feature_sizes = sizes
        if len(anchors_per_location) != len(channels):
            raise ValueError(f"{len(channels)} sources but {len(anchors_per_location)} prior layouts")
        expected = sum(a * s * s for a, s in zip(anchors_per_location, sizes))
        if priors.shape[0] != expected:
            raise ValueError(f"{priors.shape[0]} priors for sources {sizes} that need {expected}")
        self.register_buffer("priors", priors, persistent=False)
        self.anchors_per_location = list(anchors_per_location)
        self.loc_heads = nn.ModuleList(ConvBNAct(c, a * 4, 3, 1, bn=bn_head, act=False)
                                       for c, a in zip(channels, anchors_per_location))
        self.conf_heads = nn.ModuleList(ConvBNAct(c, a * num_classes, 3, 1, bn=bn_head, act=False)
                                        for c, a in zip(channels, anchors_per_location))
        self.criterion = MultiBoxLoss(iou_threshold, neg_pos_ratio, variances)
        self.background_prior = 0.0
        self.detect_cfg = dict(score_threshold=0.01, nms_threshold=0.45, top_k=400, keep_top_k=200)
        self.detect_cfg.update(detect_cfg or {})

    def init_head(self, background_prior: float = 0.99, std: float = 0.01) -> None:
        """Start the predictors near "everything is background" with small offsets.

        Without BN, the loc/conf convs get N(0, ``std``) weights (a Kaiming init
        gives logits in the tens, and a first conf loss of ~30 per positive).
        The background logit's bias (conv bias, or BN beta with ``bn_head``) is
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
            if head.bn is None:
                nn.init.normal_(head.conv.weight, std=std)
                nn.init.zeros_(head.conv.bias)
        if background_prior > 0:
            logit = math.log(background_prior * (C - 1) / (1.0 - background_prior))
            with torch.no_grad():
                for head in self.conf_heads:
                    bias = head.conv.bias if head.bn is None else head.bn.bias
                    bias.view(-1, C)[:, 0] = logit        # channels are [anchor][class]
        self.background_prior = float(background_prior)

    # ------------------------------------------------------------------ network
    def forward_raw(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's raw outputs: ``loc [B, P, 4]`` offsets and ``logits [B, P, C]``."""
        feats = self.backbone(images)
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
        cfg = {**self.detect_cfg, **{k: v for k, v in overrides.items() if v is not None}}
        return ops.detect(loc, logits, self.priors, self.variances, **cfg)

    def prepare_targets(self, targets, device) -> tuple[torch.Tensor, torch.Tensor]:
        """A padded batch dict ``{"boxes" [B,G,4], "labels" [B,G]}`` or a list of per-image
        dicts ``{"boxes" [M,4], "labels" [M]}`` -> padded ``(boxes, labels)`` on ``device``.
        Boxes are normalised (x1, y1, x2, y2); label 0 is padding."""
        if isinstance(targets, dict):
            boxes, labels = targets["boxes"], targets["labels"]
        elif isinstance(targets, (list, tuple)):
            g = max([len(t["labels"]) for t in targets] + [1])
            boxes = torch.zeros((len(targets), g, 4), dtype=torch.float32)
            labels = torch.zeros((len(targets), g), dtype=torch.int64)
            for i, t in enumerate(targets):
                m = len(t["labels"])
                boxes[i, :m] = torch.as_tensor(t["boxes"], dtype=torch.float32).reshape(m, 4).cpu()
                labels[i, :m] = torch.as_tensor(t["labels"], dtype=torch.int64).cpu()
        else:
            raise TypeError(f"targets must be a dict of padded tensors or a list of per-image dicts, "
                            f"got {type(targets).__name__}")
        boxes, labels = torch.as_tensor(boxes), torch.as_tensor(labels)
        if boxes.dim() != 3 or boxes.shape[-1] != 4 or tuple(labels.shape) != tuple(boxes.shape[:2]):
            raise ValueError(f"targets: expected boxes [B, G, 4] and labels [B, G], got {list(boxes.shape)} "
                             f"and {list(labels.shape)}")
        # checked here while the labels are usually still on the CPU (a bad label on CUDA is a device assert)
        if (labels.device.type == "cpu" and labels.numel() and not torch.compiler.is_compiling()
                and int(labels.max()) >= self.num_classes):
            raise ValueError(f"targets: label {int(labels.max())} out of range for a model with "
                             f"{self.num_classes} classes (1..{self.num_classes - 1}, 0 = background/padding)")
        return boxes.to(device=device, dtype=torch.float32), labels.to(device=device, dtype=torch.int64)

    # ------------------------------------------------------------------ inference API
    @torch.inference_mode()
    def predict(self, images, score_threshold: float | None = None, nms_threshold: float | None = None,
                top_k: int | None = None, keep_top_k: int | None = None, batch_size: int = 16) -> list[dict]:
        """Detect objects in PIL images or uint8 ``[3, H, W]`` tensors of any size.

        Each image is resized to the model's input size and normalised with
        ``scratchdet.constants`` MEAN/STD. Returns one dict per image:
        ``boxes [K, 4]`` (x1, y1, x2, y2 in the image's own pixels), ``scores [K]``,
        ``labels [K]`` (1..C-1), best first.
        """
        if not isinstance(images, (list, tuple)):
            images = [images]
        was_training = self.training
        self.eval()
        device = self.priors.device
        dtype = next(self.parameters()).dtype
        mean = torch.tensor(MEAN, device=device, dtype=dtype).view(3, 1, 1)
        std = torch.tensor(STD, device=device, dtype=dtype).view(3, 1, 1)
        results = []
        try:
            for start in range(0, len(images), batch_size):
                chunk = [_to_chw_float(img).to(device=device, dtype=dtype) for img in images[start:start + batch_size]]
                sizes = [(t.shape[2], t.shape[1]) for t in chunk]                      # (W, H)
                batch = torch.stack([
                    ((F.interpolate(t[None], size=(self.image_size, self.image_size), mode="bilinear",
                                    align_corners=False, antialias=True)[0]) - mean) / std for t in chunk])
                loc, logits = self.forward_raw(batch)
                boxes, scores, labels, num = self.detect(loc, logits, score_threshold=score_threshold,
                                                         nms_threshold=nms_threshold, top_k=top_k,
                                                         keep_top_k=keep_top_k)
                for i, (w, h) in enumerate(sizes):
                    n = int(num[i])
                    scale = torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
                    results.append({"boxes": (boxes[i, :n] * scale).cpu(), "scores": scores[i, :n].cpu(),
                                    "labels": labels[i, :n].cpu()})
        finally:
            self.train(was_training)
        return results


def _to_chw_float(img) -> torch.Tensor:
    """PIL image or ``[C, H, W]`` tensor (uint8 0..255, or float 0..1) -> float ``[3, H, W]`` in [0, 1]."""
    if isinstance(img, torch.Tensor):
        t = img
    elif hasattr(img, "convert"):                                             # PIL
        t = torch.from_numpy(np.array(img.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1)
    else:
        raise TypeError(f"predict: expected a PIL image or a [3, H, W] tensor, got {type(img).__name__}")
    if t.dim() != 3 or t.shape[0] not in (1, 3, 4):
        raise ValueError(f"predict: expected an image tensor of shape [C, H, W] with C in (1, 3, 4), "
                         f"got {list(t.shape)}")
    t = t[:3] if t.shape[0] == 4 else t.expand(3, -1, -1) if t.shape[0] == 1 else t
    if t.dtype == torch.uint8:
        return t.float() / 255.0
    if not t.is_floating_point():
        raise TypeError(f"predict: expected a uint8 or float image tensor, got {t.dtype}")
    return t.float()


class SSDRawOutputs(nn.Module):
    """Wraps an SSD so that ``forward(images) -> (loc, logits)``: the module to hand to torch.export / ONNX."""

    def __init__(self, model: SSD):
        super().__init__()
        self.model = model
        self.training = model.training          # export sees the wrapped model's mode

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_raw(images)
