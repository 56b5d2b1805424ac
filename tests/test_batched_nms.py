"""batched_nms against its reference and torchvision.

The semantics is torchvision's CPU NMS on every device (reference.batched_nms). On CPU that is
torchvision's answer. On CUDA the kernel is compared with the reference, and with torchvision
only where the two provably agree (torchvision_cuda_agrees): torchvision's CUDA nms_kernel.cu
computes fp16 IoUs in float (acc_type), compares ``iou > (float)iou_threshold`` and sorts with
an unstable torch.sort, a bitonic sort up to 32 elements (ATen cuda/Sort.cu).
"""
import pytest
import torch
import torchvision

import scratchdet
from scratchdet.ops import reference
from helpers import DEVICES, non_contiguous


def make_case(n, classes, g, dtype=torch.float32, device="cpu", ties=False):
    xy = torch.rand(n, 2, generator=g) * 0.8
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 0.3 + 0.01], 1)
    scores = torch.rand(n, generator=g)
    if ties and n:
        scores[::3] = 0.5                         # many equal scores
        boxes[1::5] = boxes[0]                    # identical boxes: IoU exactly 1
    idxs = torch.randint(0, classes, (n,), generator=g)
    return boxes.to(dtype=dtype, device=device), scores.to(dtype=dtype, device=device), idxs.to(device)


def torchvision_answer(boxes, scores, idxs, thr):
    if boxes.dtype == torch.float16 and boxes.device.type == "cpu":
        return None                               # torchvision has no CPU half NMS
    if boxes.device.type == "cuda" and not torchvision_cuda_agrees(boxes, scores, idxs, thr):
        return None
    return torchvision.ops.batched_nms(boxes, scores, idxs, thr)


# How far torchvision's CUDA IoU can be from ours: the same float ops, but its build contracts
# a * b + c into FMAs and recomputes the areas per pair, a few float ulps of an IoU <= 1 (fp64: of
# a double). The threshold it compares with is (float)thr.
_IOU_SLACK = {torch.float32: 2e-6, torch.float64: 1e-12}


def torchvision_cuda_agrees(boxes, scores, idxs, thr):
    """True where torchvision's CUDA batched_nms provably returns our answer: not fp16, no two
    equal scores, and no same-class IoU (of the boxes NMS sees, class offsets included) within
    rounding of thr or of (float)thr."""
    if boxes.dtype not in _IOU_SLACK or scores.unique().numel() != scores.numel():
        return False
    if boxes.numel() == 0:
        return True                               # (boxes.max() below has no empty form)
    b = boxes
    if boxes.numel() <= reference.TORCHVISION_VANILLA_NUMEL["cuda"]:
        b = boxes + (idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes)))[:, None]
    slack, fthr = _IOU_SLACK[boxes.dtype], float(torch.tensor(thr, dtype=torch.float32))
    lo, hi = min(thr, fthr) - slack, max(thr, fthr) + slack
    for c in idxs.unique():
        m = b[idxs == c].double()
        iou = torchvision.ops.box_iou(m, m).fill_diagonal_(0)
        if ((iou >= lo) & (iou <= hi)).any():
            return False
    return True


# Sizes on both sides of torchvision's switch (one NMS over class-offset boxes
# up to 1000 boxes on CPU, a per-class loop above).
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("n", [0, 1, 2, 37, 999, 1000, 1001, 4000])
@pytest.mark.parametrize("ties", [False, True])
def test_matches_torchvision_and_reference(device, dtype, n, ties):
    g = torch.Generator().manual_seed(n * 7 + ties)
    for thr in (0.3, 0.5, 0.7):
        boxes, scores, idxs = make_case(n, 1 + n % 17, g, dtype, device, ties)
        ours = scratchdet.ops.batched_nms(boxes, scores, idxs, thr)
        assert ours.dtype == torch.int64 and ours.device == boxes.device
        assert torch.equal(ours, reference.batched_nms(boxes, scores, idxs, thr))
        tv = torchvision_answer(boxes, scores, idxs, thr)
        if tv is not None:
            assert torch.equal(ours, tv), f"n={n} thr={thr}"


@pytest.mark.sanitize
@pytest.mark.parametrize("device", DEVICES)
def test_many_random_cases(device):
    g = torch.Generator().manual_seed(1)
    for case in range(60):
        n = int(torch.randint(0, 2500, (1,), generator=g))
        classes = int(torch.randint(1, 30, (1,), generator=g))
        boxes, scores, idxs = make_case(n, classes, g, device=device, ties=case % 2 == 0)
        thr = float(torch.rand(1, generator=g))
        ours = scratchdet.ops.batched_nms(boxes, scores, idxs, thr)
        assert torch.equal(ours, reference.batched_nms(boxes, scores, idxs, thr)), f"case {case}"
        tv = torchvision_answer(boxes, scores, idxs, thr)
        if tv is not None:
            assert torch.equal(ours, tv), f"case {case}"


# 50k boxes (200k coordinates): above the size switch on CPU (4000) and on CUDA (100 000), so
# this is the per-class branch on both devices. Distinct scores, so torchvision's order is ours.
@pytest.mark.sanitize
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_large_input_per_class_branch(device, dtype):
    g = torch.Generator().manual_seed(2)
    boxes, _, idxs = make_case(50_000, 20, g, dtype=dtype, device=device)
    # distinct in float32 (fp16 cannot hold 50k distinct values in [0, 1]: there only the reference)
    scores = torch.linspace(0, 1, 50_000, dtype=torch.float64)[torch.randperm(50_000, generator=g)]
    scores = scores.to(dtype=dtype, device=device)
    ours = scratchdet.ops.batched_nms(boxes, scores, idxs, 0.5)
    assert torch.equal(ours, reference.batched_nms(boxes, scores, idxs, 0.5))
    tv = torchvision_answer(boxes, scores, idxs, 0.5)
    if tv is not None:
        assert torch.equal(ours, tv)


# IoU exactly 0.3 in float: [0,0,10,10] vs [0,0,10,3] gives 30 / 100 = (float)0.3 = 0.30000001192...,
# which is > 0.3 in float64 (torchvision's CPU test), so the second box goes; torchvision's CUDA
# test (float)0.3 > (float)0.3 would keep it. In float64 the IoU is the double 0.3: not > 0.3, kept;
# in fp16 it rounds up to 0.30005: removed.
@pytest.mark.sanitize
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,expected", [(torch.float32, [0]), (torch.float64, [0, 1]), (torch.float16, [0])])
def test_iou_exactly_at_the_threshold(device, dtype, expected):
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 3.0]], dtype=dtype, device=device)
    scores = torch.tensor([0.9, 0.8], dtype=dtype, device=device)
    idxs = torch.zeros(2, dtype=torch.int64, device=device)
    assert float(torch.tensor(30.0, dtype=torch.float32) / 100) > 0.3
    for op in (scratchdet.ops.batched_nms, reference.batched_nms):
        assert op(boxes, scores, idxs, 0.3).tolist() == expected
    assert reference.nms(boxes, scores, 0.3).tolist() == expected
    if device == "cpu" and dtype != torch.float16:
        assert torchvision.ops.batched_nms(boxes, scores, idxs, 0.3).tolist() == expected
        assert torchvision.ops.nms(boxes, scores, 0.3).tolist() == expected


def test_reference_nms_equals_torchvision_on_cpu():
    """reference.nms (the host-side NMS of the reference, every device) is torchvision's CPU NMS:
    random inputs of every size, float32 and float64, distinct scores (torchvision's CPU sort is
    unstable, so ties may go either way there)."""
    g = torch.Generator().manual_seed(8)
    for case in range(80):
        n = int(torch.randint(0, 1500, (1,), generator=g))
        dtype = (torch.float32, torch.float64)[case % 2]
        boxes, _, _ = make_case(n, 1, g, dtype=dtype)
        scores = (torch.randperm(n, generator=g).to(torch.float64) / max(n, 1)).to(dtype)
        thr = float(torch.rand(1, generator=g))
        ours = reference.nms(boxes, scores, thr)
        assert ours.dtype == torch.int64
        assert torch.equal(ours, torchvision.ops.nms(boxes, scores, thr)), f"case {case}"


@pytest.mark.sanitize
@pytest.mark.parametrize("device", DEVICES)
def test_reference_nms_is_stable_and_nan_first(device):
    boxes = torch.tensor([[0.0, 0, 1, 1], [2, 2, 3, 3], [0, 0, 1, 1], [4, 4, 5, 5], [2, 2, 3, 3]], device=device)
    scores = torch.tensor([0.5, 0.5, 0.5, float("nan"), 0.5], device=device)
    assert reference.nms(boxes, scores, 0.5).tolist() == [3, 0, 1]   # NaN first; ties: the lower index wins
    assert scratchdet.ops.batched_nms(boxes, scores, torch.zeros(5, dtype=torch.int64, device=device),
                                      0.5).tolist() == [3, 0, 1]


def test_other_integer_idxs_negative_classes_and_non_contiguous():
    g = torch.Generator().manual_seed(3)
    for n in (500, 3000):
        boxes, scores, idxs = make_case(n, 9, g)
        idxs = idxs - 4                            # negative class ids are classes too
        expected = torchvision.ops.batched_nms(boxes, scores, idxs, 0.5)
        assert torch.equal(scratchdet.ops.batched_nms(non_contiguous(boxes), scores[::1], idxs.int(), 0.5), expected)
        wide = torch.stack([scores, scores], 1)[:, 0]
        assert torch.equal(scratchdet.ops.batched_nms(boxes, wide, idxs, 0.5), expected)


def test_single_class_equals_nms():
    g = torch.Generator().manual_seed(4)
    boxes, scores, _ = make_case(3000, 1, g)
    idxs = torch.zeros(3000, dtype=torch.int64)
    assert torch.equal(scratchdet.ops.batched_nms(boxes, scores, idxs, 0.45),
                       torchvision.ops.nms(boxes, scores, 0.45))


@pytest.mark.parametrize(
    "args,match",
    [
        ((torch.zeros(3, 5), torch.zeros(3), torch.zeros(3, dtype=torch.int64)), r"boxes of shape \[N, 4\]"),
        ((torch.zeros(3, 4), torch.zeros(3, 1), torch.zeros(3, dtype=torch.int64)), r"scores of shape \[N\]"),
        ((torch.zeros(3, 4), torch.zeros(2), torch.zeros(3, dtype=torch.int64)), "agree on N"),
        ((torch.zeros(3, 4), torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.int64)), "same dtype"),
        ((torch.zeros(3, 4), torch.zeros(3), torch.zeros(3)), "integer"),
        ((torch.zeros(3, 4, dtype=torch.int32), torch.zeros(3, dtype=torch.int32), torch.zeros(3, dtype=torch.int64)),
         "float16, float32 or float64"),
    ],
)
def test_bad_input_gives_clear_error(args, match):
    with pytest.raises(RuntimeError, match=match):
        torch.ops.scratchdet.batched_nms(*args, 0.5)
    with pytest.raises(RuntimeError, match=match):
        reference.batched_nms(*args, 0.5)


@pytest.mark.cuda
def test_wrong_device_gives_clear_error():
    with pytest.raises(RuntimeError, match="same device"):
        scratchdet.ops.batched_nms(torch.zeros(2, 4), torch.zeros(2, device="cuda"),
                                   torch.zeros(2, dtype=torch.int64), 0.5)


def test_autocast_computes_in_float32():
    g = torch.Generator().manual_seed(5)
    boxes, scores, idxs = make_case(300, 4, g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = torch.ops.scratchdet.batched_nms(boxes.bfloat16(), scores.bfloat16(), idxs, 0.5)
    assert torch.equal(out, torchvision.ops.batched_nms(boxes.bfloat16().float(), scores.bfloat16().float(), idxs, 0.5))


def test_opcheck():
    g = torch.Generator().manual_seed(6)
    for n in (0, 1, 50, 1200):
        boxes, scores, idxs = make_case(n, 3, g)
        torch.library.opcheck(torch.ops.scratchdet.batched_nms.default, (boxes, scores, idxs, 0.5))


def test_torch_compile():
    g = torch.Generator().manual_seed(7)
    boxes, scores, idxs = make_case(200, 3, g)
    fn = torch.compile(lambda b, s, i: scratchdet.ops.batched_nms(b, s, i, 0.5), backend="eager")
    assert torch.equal(fn(boxes, scores, idxs), torchvision.ops.batched_nms(boxes, scores, idxs, 0.5))
