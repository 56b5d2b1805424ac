"""detect: the kernel against a torchvision-style SSD postprocess and the reference, same inputs, same run.

The anchor, ``torchvision_style``, is what torchvision's SSD.postprocess_detections
does: per image, per class: score > threshold, topk, then batched_nms over the
image's candidates, keep detections_per_img.
"""
import pytest
import torch
import torchvision

import scratchdet
from scratchdet.ops import reference
from conftest import cuda_timer

P = 8732
CASES = [(8, 21, "flat"), (8, 21, "peaky"), (8, 81, "flat"), (32, 21, "flat"), (32, 81, "peaky")]


def make_inputs(B, C, kind, device="cpu", P=P):
    g = torch.Generator().manual_seed(B * 1000 + C)
    xy = torch.rand(P, 2, generator=g)
    priors = torch.cat([xy, torch.rand(P, 2, generator=g) * 0.3 + 0.02], 1)
    loc = torch.randn(B, P, 4, generator=g) * 0.5
    if kind == "flat":   # untrained: every prior passes 0.01 in every class
        logits = torch.randn(B, P, C, generator=g) * 0.1
    else:                # trained: a few confident priors
        logits = torch.randn(B, P, C, generator=g) * 2.0
        logits[..., 0] += 6.0
    return loc.to(device), logits.to(device), priors.to(device)


def torchvision_style(loc, logits, priors, score_threshold=0.01, nms_threshold=0.45, top_k=400, keep_top_k=200):
    """torchvision.models.detection.SSD.postprocess_detections, on SSD (cx, cy, w, h) priors."""
    boxes = reference.decode(loc, priors).clamp(0, 1)
    scores = torch.softmax(logits, -1)
    out = []
    for b in range(loc.shape[0]):
        image_boxes, image_scores, image_labels = [], [], []
        for label in range(1, logits.shape[-1]):
            score = scores[b, :, label]
            keep_idxs = score > score_threshold
            score, box = score[keep_idxs], boxes[b][keep_idxs]
            num_topk = min(top_k, score.size(0))
            score, idxs = score.topk(num_topk)
            image_boxes.append(box[idxs])
            image_scores.append(score)
            image_labels.append(torch.full_like(idxs, label))
        image_boxes, image_scores = torch.cat(image_boxes), torch.cat(image_scores)
        image_labels = torch.cat(image_labels)
        keep = torchvision.ops.batched_nms(image_boxes, image_scores, image_labels, nms_threshold)[:keep_top_k]
        out.append((image_boxes[keep], image_scores[keep], image_labels[keep]))
    return out


IMPLS = {"scratchdet": scratchdet.ops.detect, "torchvision_style": torchvision_style, "reference": reference.detect}


def _ids(case):
    return f"B{case[0]}-C{case[1]}-{case[2]}"


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_detect_cpu(benchmark, impl, case):
    if impl == "reference" and case != CASES[0]:
        pytest.skip("the reference is slow: timed on the smallest case only")
    benchmark.group = f"detect cpu {_ids(case)}"
    args = make_inputs(*case)
    benchmark(IMPLS[impl], *args)


@pytest.mark.cuda
@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_detect_cuda(benchmark, impl, case):
    if impl == "reference" and case != CASES[0]:
        pytest.skip("the reference is slow: timed on the smallest case only")
    benchmark.group = f"detect cuda {_ids(case)}"
    args = make_inputs(*case, device="cuda")
    benchmark(cuda_timer(lambda: IMPLS[impl](*args)))
