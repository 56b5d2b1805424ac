"""batch_norm_relu: the fused training-mode BatchNorm (+ residual) + ReLU, forward + backward, against
nn.BatchNorm2d + ReLU (the anchor) on the shapes of root_resnet_demo at B=32, 128 px, channels_last."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from scratchdet.models.bn_relu import BNReLU2d
from scratchdet.ops._extension import has_op

pytestmark = pytest.mark.filterwarnings("ignore:scratchdet. the compiled extension")

# (channels, side): the demo's root block, its four stages and an extra layer
SHAPES = [(8, 128), (16, 64), (32, 32), (64, 16), (128, 8)]


def _layer_step(fused: bool, channels: int, side: int, residual: bool, device="cpu"):
    torch.manual_seed(0)
    x = torch.randn(32, channels, side, side, device=device).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    r = torch.randn_like(x) if residual else None
    g = torch.randn_like(x)
    layer = BNReLU2d(channels, relu=True).to(device) if fused else nn.BatchNorm2d(channels).to(device)

    def step():
        if fused:
            y = layer(x, r)
        else:
            y = layer(x)
            y = F.relu(y + r if r is not None else y)
        y.backward(g)

    return step


@pytest.mark.parametrize("path", ["fused", "stock"])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("channels,side", SHAPES)
def test_bn_relu_layer_fwd_bwd_cpu(benchmark, channels, side, residual, path):
    if path == "fused" and not has_op("batch_norm_relu"):
        pytest.skip("the batch_norm_relu kernel is not in this build")
    benchmark.group = f"BN+ReLU{'+add' if residual else ''} fwd+bwd cpu B=32 C={channels} {side}x{side}"
    benchmark(_layer_step(path == "fused", channels, side, residual))


@pytest.mark.cuda
@pytest.mark.parametrize("path", ["fused", "stock"])
@pytest.mark.parametrize("channels,side", [(64, 150), (128, 75), (256, 38)])
def test_bn_relu_layer_fwd_bwd_cuda(benchmark, channels, side, path):
    from conftest import cuda_timer

    benchmark.group = f"BN+ReLU+add fwd+bwd cuda B=32 C={channels} {side}x{side}"
    benchmark(cuda_timer(_layer_step(path == "fused", channels, side, True, device="cuda")))
