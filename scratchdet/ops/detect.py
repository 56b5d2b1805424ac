"""detect: the public function (kernel, fake and fallback: ``_registrations.py``)."""
from __future__ import annotations

import torch

from . import _registrations


def detect(loc: torch.Tensor, logits: torch.Tensor, priors: torch.Tensor, variances=(0.1, 0.2),
           score_threshold: float = 0.01, nms_threshold: float = 0.45, top_k: int = 400,
           keep_top_k: int = 200, clip: bool = True):
    """Softmax, decode, per-class threshold + top_k + NMS, best keep_top_k per image.

    Returns ``(boxes [B,K,4], scores [B,K], labels [B,K], num_detections [B])``;
    see :func:`scratchdet.ops.reference.detect` for the exact semantics. On CUDA
    it never synchronises with the host, so it can be captured in a CUDA graph.
    """
    return _registrations.detect(loc, logits, priors, [float(v) for v in variances], float(score_threshold),
                                 float(nms_threshold), int(top_k), int(keep_top_k), bool(clip))
