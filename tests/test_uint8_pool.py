"""max_pool2d_uint8 (the int8 predictor's channels_last uint8 max-pool) against torch's max-pool on
the contiguous layout, which is exact and accepts uint8."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchdet.models.uint8_pool import max_pool2d_uint8


@st.composite
def pooling_cases(draw):
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    padding = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    ceil_mode = draw(st.booleans())
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 19)), draw(st.integers(1, 17)), draw(st.integers(1, 17)))
    layout = draw(st.sampled_from(["channels_last", "contiguous", "sliced"]))
    seed = draw(st.integers(0, 2**31 - 1))
    return k, stride, padding, dilation, ceil_mode, shape, layout, seed


def _input(shape, layout, seed):
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    if layout == "sliced":                                   # non-contiguous: every other channel and column
        return torch.randint(0, 256, (n, 2 * c, h, 2 * w), generator=g, dtype=torch.uint8)[:, ::2, :, ::2]
    x = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


@settings(max_examples=300, deadline=None)
@given(pooling_cases())
def test_equals_torch_max_pool_on_the_contiguous_layout(case):
    k, stride, padding, dilation, ceil_mode, shape, layout, seed = case
    x = _input(shape, layout, seed)
    try:
        want = F.max_pool2d(x.contiguous(), k, stride, padding, dilation, ceil_mode)
    except RuntimeError:                                     # torch refuses it (window larger than the input)
        with pytest.raises(ValueError, match="max_pool2d_uint8"):
            max_pool2d_uint8(x, k, stride, padding, dilation, ceil_mode)
        return
    before = x.clone()
    got = max_pool2d_uint8(x, k, stride, padding, dilation, ceil_mode)
    assert torch.equal(x, before)                            # the input is never written (a 1x1 window is a view)
    assert got.dtype == torch.uint8 and got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, want)


@pytest.mark.parametrize("args", [(3, 2, 1), (2, 2), (2, 2, 0, 1, True), (3, 1, 1)])
def test_the_pools_of_the_presets(args):
    """The stem's 3x3/2 pad 1 and 2x2/2 pools, VGG's ceil-mode pool and its fc 3x3/1 pool."""
    x = torch.randint(0, 256, (2, 64, 75, 75), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    assert torch.equal(max_pool2d_uint8(x, *args), F.max_pool2d(x.contiguous(), *args))


def test_int_and_list_arguments_match_pairs():
    x = torch.randint(0, 256, (1, 3, 9, 11), dtype=torch.uint8)
    assert torch.equal(max_pool2d_uint8(x, [3], [2], [1]), max_pool2d_uint8(x, (3, 3), (2, 2), (1, 1)))
    assert torch.equal(max_pool2d_uint8(x, 3, []), F.max_pool2d(x, 3))     # torch.max_pool2d's default stride


@pytest.mark.parametrize("x,kwargs,message", [
    (torch.zeros(1, 3, 8, 8), {"kernel_size": 2}, "uint8"),
    (torch.zeros(3, 8, 8, dtype=torch.uint8), {"kernel_size": 2}, "4-d"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), {"kernel_size": 2, "padding": 2}, "at most half"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), {"kernel_size": 0}, "bad pooling kernel"),
    (torch.zeros(1, 3, 2, 2, dtype=torch.uint8), {"kernel_size": 3}, "smaller than"),
])
def test_refuses_what_it_cannot_pool(x, kwargs, message):
    with pytest.raises(ValueError, match=message):
        max_pool2d_uint8(x, **kwargs)
