"""SSD box arithmetic: (cx, cy, w, h) <-> (x1, y1, x2, y2) and the prior offsets, in the operation
order of csrc/ops/common/box_math.h."""
from __future__ import annotations

import torch

__all__ = ["point_form", "encode", "decode"]


def point_form(priors: torch.Tensor) -> torch.Tensor:
    """(cx, cy, w, h) -> (x1, y1, x2, y2), in the operation order of box_math.h."""
    return torch.cat((priors[..., :2] - priors[..., 2:] / 2, priors[..., :2] + priors[..., 2:] / 2), dim=-1)


def encode(matched: torch.Tensor, priors: torch.Tensor, variances=(0.1, 0.2)) -> torch.Tensor:
    """Encode (x1, y1, x2, y2) boxes against (cx, cy, w, h) priors (SSD)."""
    v0, v1 = variances
    g_cxcy = ((matched[..., :2] + matched[..., 2:]) / 2 - priors[..., :2]) / (v0 * priors[..., 2:])
    g_wh = torch.log((matched[..., 2:] - matched[..., :2]) / priors[..., 2:]) / v1
    return torch.cat((g_cxcy, g_wh), dim=-1)


def decode(loc: torch.Tensor, priors: torch.Tensor, variances=(0.1, 0.2)) -> torch.Tensor:
    """Decode SSD offsets against (cx, cy, w, h) priors to (x1, y1, x2, y2)."""
    v0, v1 = variances
    cxcy = priors[..., :2] + loc[..., :2] * v0 * priors[..., 2:]
    wh = priors[..., 2:] * torch.exp(loc[..., 2:] * v1)
    x1y1 = cxcy - wh / 2
    return torch.cat((x1y1, x1y1 + wh), dim=-1)
