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
    return torchvision.ops.batched_nms(boxes, scores, idxs, thr)


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


@pytest.mark.parametrize("device", DEVICES)
def test_many_random_cases(device):
    g = torch.Generator().manual_seed(1)
    for case in range(60):
        n = int(torch.randint(0, 2500, (1,), generator=g))
        classes = int(torch.randint(1, 30, (1,), generator=g))
        boxes, scores, idxs = make_case(n, classes, g, device=device, ties=case % 2 == 0)
        thr = float(torch.rand(1, generator=g))
        assert torch.equal(scratchdet.ops.batched_nms(boxes, scores, idxs, thr),
                           torchvision.ops.batched_nms(boxes, scores, idxs, thr)), f"case {case}"


def test_large_input_matches_torchvision():
    g = torch.Generator().manual_seed(2)
    boxes, scores, idxs = make_case(50_000, 20, g)
    assert torch.equal(scratchdet.ops.batched_nms(boxes, scores, idxs, 0.5),
                       torchvision.ops.batched_nms(boxes, scores, idxs, 0.5))


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
