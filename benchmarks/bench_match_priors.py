"""match_priors: the kernel against the reference and the original SSD per-image loop, same sizes, same run.

The anchor, ``ssd_loop``, is the matching of the original SSD code (ssd.pytorch's
``match``, called once per image from MultiBoxLoss): jaccard overlaps, best GT per
prior, best prior per GT forced in with overlap 2, threshold, encode. It takes
per-image lists of the valid boxes and labels, as that code does, and gets them
ready-made (untimed).
"""
import sys
from pathlib import Path

import pytest
import torch

import scratchdet
from scratchdet.ops import reference
from conftest import cuda_timer

sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))  # for the ssd300_priors helper
from ssd300_priors import ssd300_priors  # noqa: E402

BATCH = 32
NUM_GT = [6, 50]
VARIANCES = (0.1, 0.2)


# ----------------------------------------------------------------- the original SSD loop (anchor)
def _point_form(priors):
    return torch.cat((priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2), 1)


def _jaccard(box_a, box_b):
    a, b = box_a.size(0), box_b.size(0)
    max_xy = torch.min(box_a[:, None, 2:].expand(a, b, 2), box_b[None, :, 2:].expand(a, b, 2))
    min_xy = torch.max(box_a[:, None, :2].expand(a, b, 2), box_b[None, :, :2].expand(a, b, 2))
    inter = torch.clamp(max_xy - min_xy, min=0).prod(2)
    area_a = ((box_a[:, 2] - box_a[:, 0]) * (box_a[:, 3] - box_a[:, 1]))[:, None].expand_as(inter)
    area_b = ((box_b[:, 2] - box_b[:, 0]) * (box_b[:, 3] - box_b[:, 1]))[None, :].expand_as(inter)
    return inter / (area_a + area_b - inter)


def _encode(matched, priors, variances):
    g_cxcy = ((matched[:, :2] + matched[:, 2:]) / 2 - priors[:, :2]) / (variances[0] * priors[:, 2:])
    g_wh = torch.log((matched[:, 2:] - matched[:, :2]) / priors[:, 2:]) / variances[1]
    return torch.cat([g_cxcy, g_wh], 1)


def ssd_loop(priors, truths_per_image, labels_per_image, threshold=0.5, variances=VARIANCES):
    """ssd.pytorch's per-image ``match`` loop, written out (labels already 1..C-1)."""
    num = len(truths_per_image)
    loc_t = priors.new_empty((num, priors.size(0), 4))
    conf_t = torch.empty((num, priors.size(0)), dtype=torch.int64, device=priors.device)
    prior_boxes = _point_form(priors)
    for idx, (truths, labels) in enumerate(zip(truths_per_image, labels_per_image)):
        overlaps = _jaccard(truths, prior_boxes)
        _, best_prior_idx = overlaps.max(1)
        best_truth_overlap, best_truth_idx = overlaps.max(0)
        best_truth_overlap.index_fill_(0, best_prior_idx, 2)
        for j in range(best_prior_idx.size(0)):
            best_truth_idx[best_prior_idx[j]] = j
        matches = truths[best_truth_idx]
        conf = labels[best_truth_idx]
        conf[best_truth_overlap < threshold] = 0
        loc_t[idx] = _encode(matches, priors, variances)
        conf_t[idx] = conf
    return loc_t, conf_t


# ----------------------------------------------------------------- inputs
def _inputs(num_gt, device):
    g = torch.Generator().manual_seed(num_gt)
    xy = torch.rand(BATCH, num_gt, 2, generator=g) * 0.8
    wh = torch.rand(BATCH, num_gt, 2, generator=g) * (1 - xy) * 0.9 + 0.02
    boxes = torch.cat([xy, xy + wh], -1)
    labels = torch.randint(1, 21, (BATCH, num_gt), generator=g)
    # Ragged images, as in a real batch: image b keeps its first num_gt - (b % 3) boxes, the rest is padding.
    for b in range(BATCH):
        labels[b, num_gt - (b % 3):] = 0
    priors = ssd300_priors(device=device)
    boxes, labels = boxes.to(device), labels.to(device)
    truths = [boxes[b][labels[b] > 0] for b in range(BATCH)]
    per_image_labels = [labels[b][labels[b] > 0] for b in range(BATCH)]
    return priors, boxes, labels, truths, per_image_labels


IMPLS = {
    "scratchdet": lambda pr, bx, lb, tr, pl: scratchdet.ops.match_priors(pr, bx, lb),
    "reference": lambda pr, bx, lb, tr, pl: reference.match_priors(pr, bx, lb),
    "ssd_loop": lambda pr, bx, lb, tr, pl: ssd_loop(pr, tr, pl),
}


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("num_gt", NUM_GT, ids=lambda g: f"B{BATCH}-G{g}-P8732")
def test_match_priors_cpu(benchmark, impl, num_gt):
    benchmark.group = f"match_priors cpu B={BATCH} G={num_gt} P=8732"
    args = _inputs(num_gt, "cpu")
    benchmark(IMPLS[impl], *args)


@pytest.mark.cuda
@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("num_gt", NUM_GT, ids=lambda g: f"B{BATCH}-G{g}-P8732")
def test_match_priors_cuda(benchmark, impl, num_gt):
    benchmark.group = f"match_priors cuda B={BATCH} G={num_gt} P=8732"
    args = _inputs(num_gt, "cuda")
    benchmark(cuda_timer(lambda: IMPLS[impl](*args)))


def test_anchor_agrees_with_the_kernel():
    """The anchor computes the same thing (up to ties, which it breaks its own way)."""
    priors, boxes, labels, truths, per_image_labels = _inputs(6, "cpu")
    loc_a, conf_a = ssd_loop(priors, truths, per_image_labels)
    loc_k, conf_k, _ = scratchdet.ops.match_priors(priors, boxes, labels)
    assert (conf_a == conf_k).float().mean() > 0.999
    fg = (conf_a > 0) & (conf_a == conf_k)
    torch.testing.assert_close(loc_a[fg], loc_k[fg], rtol=1e-5, atol=1e-5)
