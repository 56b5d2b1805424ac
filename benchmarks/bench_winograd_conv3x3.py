"""winograd_conv3x3 against the other ways to run one fused 3x3 stride-1 conv + bias + residual + ReLU,
on ScratchDet300's layer shapes (B=1, channels_last, fp32, CPU), same run:
- winograd:    scratchdet.ops.winograd_conv3x3, F(4x4, 3x3) (weight packed once)
- winograd-f63: the same with F(6x6, 3x3) tiles (winograd_f63_pack)
- onednn:      oneDNN conv with the weight prepacked once and add + ReLU as post-ops
               (mkldnn::_convolution_pointwise, what TorchScript/Inductor freezing use)
- conv_bn_act: scratchdet.ops.conv_bn_act (oneDNN conv + our epilogue)
- eager:       F.conv2d + add + relu
- reference:   scratchdet.ops.reference.winograd_conv3x3 (tensor ops), smallest layer only
"""
import pytest
import torch
import torch.nn.functional as F

from scratchdet import ops
from scratchdet.models import onednn
from scratchdet.ops import reference

# (H = W, C_in = C_out): the root block, stage 2 and stage 4 of Root-ResNet-34 at 300x300
LAYERS = [(300, 64), (75, 128), (19, 512)]
IMPLS = ["winograd", "winograd-f63", "onednn", "conv_bn_act", "eager", "reference"]


def _case(size, channels):
    g = torch.Generator().manual_seed(size)
    x = torch.randn(1, channels, size, size, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(channels, channels, 3, 3, generator=g) / (9 * channels) ** 0.5
    b = torch.randn(channels, generator=g)
    r = torch.randn(1, channels, size, size, generator=g).contiguous(memory_format=torch.channels_last)
    return x, w, b, r


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layer", LAYERS, ids=lambda s: f"{s[0]}x{s[0]}x{s[1]}")
def test_winograd_conv3x3_cpu(benchmark, impl, layer):
    benchmark.group = f"conv3x3 + bias + add + relu cpu {layer[0]}x{layer[0]}x{layer[1]}"
    x, w, b, r = _case(*layer)
    if impl in ("winograd", "winograd-f63"):
        packed = (ops.winograd_f43_pack if impl == "winograd" else ops.winograd_f63_pack)(w)
        fn = lambda: ops.winograd_conv3x3(x, packed, b, r, True)  # noqa: E731
    elif impl == "onednn":
        if not onednn.available():
            pytest.skip("this torch build has no oneDNN")
        packed = onednn.pack_weight(w, [1, 1], [1, 1], [1, 1], 1, x.shape)
        fn = lambda: onednn.conv_pointwise(x, packed, b, [1, 1], [1, 1], [1, 1], 1, True, r)  # noqa: E731
    elif impl == "conv_bn_act":
        fn = lambda: ops.conv_bn_act(x, w, b, r, 1, 1, 1, 1, True)  # noqa: E731
    elif impl == "eager":
        fn = lambda: torch.relu(F.conv2d(x, w, b, padding=1) + r)  # noqa: E731
    else:
        if layer != LAYERS[-1]:
            pytest.skip("the tensor-op reference is timed on the smallest layer only")
        packed = reference.winograd_f43_pack(w)
        fn = lambda: reference.winograd_conv3x3(x, packed, b, r, True)  # noqa: E731
    with torch.inference_mode():
        fn()
        benchmark(fn)
