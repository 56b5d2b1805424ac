"""MultiBoxLoss: SSD's localisation + confidence loss with hard negative mining."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops

__all__ = ["MultiBoxLoss"]


class MultiBoxLoss(nn.Module):
    """Smooth L1 on positive priors plus softmax cross-entropy on positives and mined negatives.

    Matching is :func:`scratchdet.ops.match_priors`. Negatives are the background
    priors with the highest confidence loss, ``neg_pos_ratio`` per positive and
    image (at most all background priors), chosen for the whole batch at once
    with a sort, no per-image loop. Both terms are divided by the number of
    positives in the batch (at least 1, so a batch without objects gives a
    finite loss: zero, since it also mines no negatives).
    """

    def __init__(self, iou_threshold: float = 0.5, neg_pos_ratio: float = 3.0, variances=(0.1, 0.2),
                 loc_weight: float = 1.0):
        super().__init__()
        self.iou_threshold = float(iou_threshold)
        self.neg_pos_ratio = float(neg_pos_ratio)
        self.variances = tuple(float(v) for v in variances)
        self.loc_weight = float(loc_weight)

    def forward(self, loc: torch.Tensor, logits: torch.Tensor, priors: torch.Tensor, gt_boxes: torch.Tensor,
                gt_labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``loc [B,P,4]``, ``logits [B,P,C]``, ``priors [P,4]``, padded ``gt_boxes [B,G,4]``, ``gt_labels [B,G]``."""
        B, P, C = logits.shape
        with torch.no_grad():
            loc_t, conf_t, _ = ops.match_priors(priors.float(), gt_boxes.float(), gt_labels,
                                                self.iou_threshold, self.variances)
        pos = conf_t > 0                                                        # [B, P]
        num_pos = pos.sum(dim=1, keepdim=True)                                  # [B, 1]
        total_pos = num_pos.sum()
        norm = total_pos.clamp(min=1).to(torch.float32)

        # masked instead of indexed, so shapes stay static (torch.compile, CUDA graphs)
        loss_loc = F.smooth_l1_loss(loc.float(), loc_t, reduction="none").sum(-1)
        loss_loc = (loss_loc * pos).sum()

        # softmax cross-entropy per prior as logsumexp - the target's logit: the same function as
        # F.cross_entropy(reduction="none"), without materialising the [B, P, C] log-probabilities
        # (faster for the few classes of an SSD; benchmarks/RESULTS.md, "training step")
        z = logits.float()
        ce = z.logsumexp(dim=-1) - z.gather(-1, conf_t.unsqueeze(-1)).squeeze(-1)
        # the num_neg background priors of highest loss per image (positives rank last), ties to the
        # lower prior index: exactly the first num_neg of a stable descending sort, found from one
        # sort of the values (the k-th largest) instead of a stable sort and its inverse
        mining = ce.detach().masked_fill(pos, -1.0)
        num_neg = (num_pos * self.neg_pos_ratio).long().clamp(max=P)
        neg = self.hardest(mining, num_neg) & ~pos
        loss_conf = (ce * (pos | neg)).sum()

        loss_loc, loss_conf = loss_loc / norm, loss_conf / norm
        return {"loss": self.loc_weight * loss_loc + loss_conf, "loss_loc": loss_loc,
                "loss_conf": loss_conf, "num_pos": total_pos}

    @staticmethod
    def hardest(values: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Per row of ``values [B, P]``, a mask of the ``k [B, 1]`` largest, ties to the lower index (the
        first k of a stable descending sort); static shapes, so it traces for torch.compile."""
        kth = values.sort(dim=1, descending=True).values.gather(1, (k - 1).clamp(min=0))   # the k-th largest
        above = values > kth
        at = values == kth
        room = k - above.sum(dim=1, keepdim=True)            # how many of the tied values still fit
        return (above | (at & (at.cumsum(dim=1) <= room))) & (k > 0)
