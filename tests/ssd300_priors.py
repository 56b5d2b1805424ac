"""The 8732 SSD300 (VOC) priors, as ssd.pytorch's PriorBox makes them: test data for match_priors.

Self-contained (imports only torch) so benchmarks can use it too.
"""
import itertools
import math

import torch

FEATURE_MAPS = (38, 19, 10, 5, 3, 1)
STEPS = (8, 16, 32, 64, 100, 300)
MIN_SIZES = (30, 60, 111, 162, 213, 264)
MAX_SIZES = (60, 111, 162, 213, 264, 315)
ASPECT_RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))


def ssd300_priors(image_size: int = 300, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """``[8732, 4]`` (cx, cy, w, h) priors normalised to [0, 1] (clipped, as ssd.pytorch)."""
    rows = []
    for k, f in enumerate(FEATURE_MAPS):
        f_k = image_size / STEPS[k]
        s_k = MIN_SIZES[k] / image_size
        s_k_prime = math.sqrt(s_k * (MAX_SIZES[k] / image_size))
        for i, j in itertools.product(range(f), repeat=2):
            cx, cy = (j + 0.5) / f_k, (i + 0.5) / f_k
            rows += [(cx, cy, s_k, s_k), (cx, cy, s_k_prime, s_k_prime)]
            for ar in ASPECT_RATIOS[k]:
                r = math.sqrt(ar)
                rows += [(cx, cy, s_k * r, s_k / r), (cx, cy, s_k / r, s_k * r)]
    return torch.tensor(rows, dtype=torch.float64).clamp_(0.0, 1.0).to(dtype=dtype, device=device)
