"""batched_nms: the kernel against torchvision.ops.batched_nms (and the reference), same inputs, same run."""
import pytest
import torch
import torchvision

import scratchdet
from scratchdet.ops import reference
from conftest import cuda_timer

IMPLS = {
    "scratchdet": scratchdet.ops.batched_nms,
    "torchvision": torchvision.ops.batched_nms,
    "reference": reference.batched_nms,
}
SIZES = [(50_000, 20), (2_000, 20)]


def make_inputs(n, classes, device="cpu"):
    """n detector-like candidates: boxes of 2-30% of the image, scores in (0, 1)."""
    g = torch.Generator().manual_seed(n)
    xy = torch.rand(n, 2, generator=g) * 0.8
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 0.28 + 0.02], 1)
    return (boxes.to(device), torch.rand(n, generator=g).to(device),
            torch.randint(0, classes, (n,), generator=g).to(device))


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}cls")
def test_batched_nms_cpu(benchmark, impl, size):
    if impl == "reference" and size[0] > 5000:
        pytest.skip("the reference is slow: timed on the small case only")
    benchmark.group = f"batched_nms cpu {size[0]} boxes {size[1]} classes"
    boxes, scores, idxs = make_inputs(*size)
    benchmark(IMPLS[impl], boxes, scores, idxs, 0.5)


@pytest.mark.cuda
@pytest.mark.parametrize("impl", ["scratchdet", "torchvision"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}cls")
def test_batched_nms_cuda(benchmark, impl, size):
    benchmark.group = f"batched_nms cuda {size[0]} boxes {size[1]} classes"
    boxes, scores, idxs = make_inputs(*size, device="cuda")
    benchmark(cuda_timer(lambda: IMPLS[impl](boxes, scores, idxs, 0.5)))
