import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def random_boxes(n, generator=None, dtype=torch.float32, device="cpu", min_size=1e-3):
    """n valid (x1, y1, x2, y2) boxes in [0, 1]."""
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    wh = torch.rand(n, 2, generator=generator, dtype=torch.float64) * (1 - xy) + min_size
    return torch.cat([xy, xy + wh], dim=1).to(dtype=dtype, device=device)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
