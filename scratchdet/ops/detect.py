"""detect: SSD detection output (compiled kernel or reference fallback)."""
from __future__ import annotations

import torch

from . import reference
from ._extension import has_op, warn_fallback

_HAS_KERNEL = has_op("detect")

if _HAS_KERNEL:
    @torch.library.register_fake("scratchdet::detect")
    def _detect_fake(loc, logits, priors, variances=(0.1, 0.2), score_threshold=0.01, nms_threshold=0.45,
                     top_k=400, keep_top_k=200, clip=True):
        torch._check(loc.dim() == 3 and loc.shape[-1] == 4, lambda: "detect: loc must be [B, P, 4]")
        torch._check(logits.dim() == 3, lambda: "detect: logits must be [B, P, C]")
        torch._check(priors.dim() == 2 and priors.shape[-1] == 4, lambda: "detect: priors must be [P, 4]")
        torch._check(keep_top_k >= 1, lambda: "detect: keep_top_k must be >= 1")
        dtype = torch.promote_types(torch.promote_types(loc.dtype, priors.dtype), torch.float32)
        B = loc.shape[0]
        return (loc.new_empty((B, keep_top_k, 4), dtype=dtype), loc.new_empty((B, keep_top_k), dtype=dtype),
                loc.new_empty((B, keep_top_k), dtype=torch.int64), loc.new_empty((B,), dtype=torch.int64))


def detect(loc: torch.Tensor, logits: torch.Tensor, priors: torch.Tensor, variances=(0.1, 0.2),
           score_threshold: float = 0.01, nms_threshold: float = 0.45, top_k: int = 400,
           keep_top_k: int = 200, clip: bool = True):
    """Softmax, decode, per-class threshold + top_k + NMS, best keep_top_k per image.

    Returns ``(boxes [B,K,4], scores [B,K], labels [B,K], num_detections [B])``;
    see :func:`scratchdet.ops.reference.detect` for the exact semantics. On CUDA
    it never synchronises with the host, so it can be captured in a CUDA graph.
    """
    if _HAS_KERNEL:
        return torch.ops.scratchdet.detect(loc, logits, priors, [float(v) for v in variances],
                                           float(score_threshold), float(nms_threshold), int(top_k),
                                           int(keep_top_k), bool(clip))
    warn_fallback("detect")
    return reference.detect(loc, logits, priors, variances, score_threshold, nms_threshold, top_k,
                            keep_top_k, clip)
