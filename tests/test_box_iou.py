import pytest
import torch
import torchvision

import scratchdet
from scratchdet.ops import reference
from helpers import DEVICES, non_contiguous, random_boxes, given, settings, st


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_torchvision_on_200_random_cases(device, dtype):
    g = torch.Generator().manual_seed(0)
    for case in range(200):
        n, m = torch.randint(1, 64, (2,), generator=g).tolist()
        a = random_boxes(n, g, dtype, device)
        b = random_boxes(m, g, dtype, device)
        ours = torch.ops.scratchdet.box_iou(a, b)
        tv = torchvision.ops.box_iou(a, b)
        assert ours.dtype == dtype and ours.shape == (n, m)
        torch.testing.assert_close(ours, tv, rtol=1e-6, atol=1e-7, msg=f"case {case}")
        torch.testing.assert_close(ours, reference.box_iou(a, b), rtol=0, atol=0)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 40), m=st.integers(0, 40), seed=st.integers(0, 2**31 - 1),
       degenerate=st.booleans())
def test_matches_reference_property(n, m, seed, degenerate):
    g = torch.Generator().manual_seed(seed)
    a = random_boxes(n, g)
    b = random_boxes(m, g)
    if degenerate and n:
        a[0, 2] = a[0, 0]  # zero width
        b[:, 3] = b[:, 1] if m else b[:, 3]
    ours = scratchdet.ops.box_iou(a, b)
    assert torch.equal(ours, reference.box_iou(a, b))
    assert torch.isfinite(ours).all()
    assert ((ours >= 0) & (ours <= 1)).all()


@pytest.mark.sanitize
@pytest.mark.parametrize("device", DEVICES)
def test_half_and_bfloat16(device):
    g = torch.Generator().manual_seed(1)
    a, b = random_boxes(30, g, device=device), random_boxes(20, g, device=device)
    for dtype in (torch.float16, torch.bfloat16):
        out = scratchdet.ops.box_iou(a.to(dtype), b.to(dtype))
        assert out.dtype == dtype
        torch.testing.assert_close(out, reference.box_iou(a.to(dtype), b.to(dtype)), rtol=0, atol=0)
        # Computed in float32 from the rounded boxes: only the output rounding differs.
        exact = torchvision.ops.box_iou(a.to(dtype).float(), b.to(dtype).float()).nan_to_num(0.0)  # rounding can make a box empty
        torch.testing.assert_close(out.float(), exact, rtol=0, atol=4e-3)


@pytest.mark.sanitize
@pytest.mark.parametrize("device", DEVICES)
def test_empty_inputs(device):
    e = torch.zeros(0, 4, device=device)
    b = random_boxes(3, device=device)
    assert scratchdet.ops.box_iou(e, b).shape == (0, 3)
    assert scratchdet.ops.box_iou(b, e).shape == (3, 0)
    assert scratchdet.ops.box_iou(e, e).shape == (0, 0)


def test_known_values_identical_disjoint_and_zero_area():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 5.0, 6.0]])
    b = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 0.0, 3.0, 2.0], [10.0, 10.0, 11.0, 11.0], [5.0, 5.0, 5.0, 6.0]])
    out = scratchdet.ops.box_iou(a, b)
    expected = torch.tensor([[1.0, 1.0 / 3.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(out, expected)


@pytest.mark.sanitize
@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device):
    g = torch.Generator().manual_seed(2)
    a, b = random_boxes(17, g, device=device), random_boxes(9, g, device=device)
    torch.testing.assert_close(scratchdet.ops.box_iou(non_contiguous(a), b.t().contiguous().t()),
                               reference.box_iou(a, b), rtol=0, atol=0)


@pytest.mark.cuda
def test_cuda_more_rows_than_one_grid_column():
    """600k rows: more than gridDim.y (65535) * 8 rows per block, so the kernel's row loop wraps."""
    g = torch.Generator().manual_seed(4)
    a, b = random_boxes(600_000, g, device="cuda"), random_boxes(3, g, device="cuda")
    ours = scratchdet.ops.box_iou(a, b)
    assert ours.shape == (600_000, 3)
    torch.testing.assert_close(ours, reference.box_iou(a, b), rtol=0, atol=0)


def test_large_inputs_parallel_path():
    g = torch.Generator().manual_seed(3)
    a, b = random_boxes(3000, g), random_boxes(500, g)
    torch.testing.assert_close(scratchdet.ops.box_iou(a, b), torchvision.ops.box_iou(a, b), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "a,b,match",
    [
        (torch.zeros(3, 5), torch.zeros(2, 4), r"box_iou: expected boxes1 of shape \[N, 4\], got shape \[3, 5\]"),
        (torch.zeros(3, 4), torch.zeros(2, 4, 1), r"expected boxes2 of shape \[M, 4\]"),
        (torch.zeros(3, 4, dtype=torch.int64), torch.zeros(2, 4, dtype=torch.int64), "floating-point"),
        (torch.zeros(3, 4), torch.zeros(2, 4, dtype=torch.float64), "same dtype"),
    ],
)
def test_bad_input_gives_clear_error(a, b, match):
    with pytest.raises(RuntimeError, match=match):
        torch.ops.scratchdet.box_iou(a, b)
    with pytest.raises(RuntimeError, match=match):
        reference.box_iou(a, b)


@pytest.mark.cuda
def test_wrong_device_gives_clear_error():
    with pytest.raises(RuntimeError, match="same device"):
        scratchdet.ops.box_iou(torch.zeros(2, 4), torch.zeros(2, 4, device="cuda"))


def test_autocast_computes_in_float32():
    a, b = random_boxes(5), random_boxes(6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = torch.ops.scratchdet.box_iou(a.bfloat16(), b.bfloat16())
    assert out.dtype == torch.float32


def test_opcheck():
    g = torch.Generator().manual_seed(4)
    for n, m in [(5, 7), (0, 3), (1, 1)]:
        torch.library.opcheck(torch.ops.scratchdet.box_iou.default, (random_boxes(n, g), random_boxes(m, g)))


def test_torch_compile_fullgraph():
    fn = torch.compile(lambda a, b: scratchdet.ops.box_iou(a, b).max(dim=1).values, fullgraph=True, backend="eager")
    a, b = random_boxes(8), random_boxes(4)
    torch.testing.assert_close(fn(a, b), reference.box_iou(a, b).max(dim=1).values)
