"""box_iou: the kernel against torchvision.ops.box_iou and the reference, same sizes, same run."""
import pytest
import torch
import torchvision

import scratchdet
from scratchdet.ops import reference
from conftest import cuda_timer

SIZES = [(200, 8732), (2000, 2000)]
IMPLS = {
    "scratchdet": scratchdet.ops.box_iou,
    "torchvision": torchvision.ops.box_iou,
    "reference": reference.box_iou,
}


def _boxes(n, device):
    g = torch.Generator().manual_seed(n)
    xy = torch.rand(n, 2, generator=g)
    return torch.cat([xy, xy + torch.rand(n, 2, generator=g) * (1 - xy) + 1e-3], 1).to(device)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_box_iou_cpu(benchmark, impl, size):
    benchmark.group = f"box_iou cpu {size[0]}x{size[1]}"
    a, b = _boxes(size[0], "cpu"), _boxes(size[1], "cpu")
    benchmark(IMPLS[impl], a, b)


@pytest.mark.cuda
@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_box_iou_cuda(benchmark, impl, size):
    benchmark.group = f"box_iou cuda {size[0]}x{size[1]}"
    a, b = _boxes(size[0], "cuda"), _boxes(size[1], "cuda")
    benchmark(cuda_timer(lambda: IMPLS[impl](a, b)))
