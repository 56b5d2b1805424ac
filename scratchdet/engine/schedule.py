"""Learning-rate schedule: linear warmup, then multi-step or cosine decay (per iteration)."""
from __future__ import annotations

import math


def lr_factor(it: int, max_iters: int, warmup_iters: int, warmup_factor: float, schedule: str,
              milestones=(0.67, 0.89), gamma: float = 0.1) -> float:
    """Multiplier of the base lr at iteration ``it`` (0-based)."""
    if warmup_iters > 0 and it < warmup_iters:
        alpha = it / warmup_iters
        warm = warmup_factor * (1 - alpha) + alpha
    else:
        warm = 1.0
    if schedule == "cosine":
        start = min(warmup_iters, max_iters - 1)
        t = max(0, it - start) / max(1, max_iters - start)
        decay = 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    else:
        passed = sum(1 for m in milestones if it >= int(m * max_iters if m < 1 else m))
        decay = gamma ** passed
    return warm * decay
