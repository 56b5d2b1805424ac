"""VOC mAP: hand-computed cases and a literal port of the devkit loop on random data."""
import numpy as np
import pytest
import torch

from scratchdet.evaluation import average_precision, format_ap_table, plot_pr_curves, voc_eval


def img(gt_boxes, gt_labels, det_boxes=(), scores=(), det_labels=(), difficult=None):
    ann = {"boxes": torch.tensor(gt_boxes, dtype=torch.float32).reshape(-1, 4),
           "labels": torch.tensor(gt_labels, dtype=torch.int64)}
    if difficult is not None:
        ann["difficult"] = torch.tensor(difficult, dtype=torch.bool)
    det = {"boxes": torch.tensor(det_boxes, dtype=torch.float32).reshape(-1, 4),
           "scores": torch.tensor(scores, dtype=torch.float32), "labels": torch.tensor(det_labels)}
    return det, ann


def run(images, **kw):
    dets, anns = zip(*images)
    return voc_eval(list(dets), list(anns), **kw)


def test_perfect_detections_give_exactly_one():
    boxes = [[0, 0, 9, 9], [20, 20, 39, 49], [5, 30, 25, 35]]
    images = [img(boxes, [1, 2, 1], boxes, [0.9, 0.8, 0.7], [1, 2, 1]), img([[1, 1, 5, 5]], [3], [[1, 1, 5, 5]], [0.1], [3])]
    for use07 in (True, False):
        res = run(images, use_07_metric=use07)
        assert res["map"] == 1.0
        assert res["ap"] == {1: 1.0, 2: 1.0, 3: 1.0}


def test_hand_computed_ranking():
    # 4 GTs of one class in two images; 5 detections, in score order: TP, FP, TP, FP(duplicate), TP.
    a = [[0, 0, 9, 9], [20, 20, 29, 29]]
    b = [[0, 0, 9, 9], [50, 50, 59, 59]]
    images = [
        img(a, [1, 1], [[0, 0, 9, 9], [100, 100, 110, 110], [0, 0, 9, 9]], [0.9, 0.8, 0.6], [1, 1, 1]),
        img(b, [1, 1], [[50, 50, 59, 59], [0, 0, 9, 9]], [0.7, 0.5], [1, 1]),
    ]
    # ranks: .9 TP, .8 FP, .7 TP, .6 FP (duplicate of the .9 box), .5 TP
    # recall 1/4, 1/4, 2/4, 2/4, 3/4 ; precision 1, 1/2, 2/3, 1/2, 3/5
    recall = np.array([1, 1, 2, 2, 3]) / 4
    precision = np.array([1, 1 / 2, 2 / 3, 1 / 2, 3 / 5])
    # 11-point: t=0..0.2 -> 1; t=0.3..0.5 -> 2/3; t=0.6,0.7 -> 3/5; t=0.8..1 -> 0
    ap07 = (3 * 1 + 3 * (2 / 3) + 2 * (3 / 5)) / 11
    # area: envelope 1 on (0, .25], 2/3 on (.25, .5], 3/5 on (.5, .75]
    ap_area = 0.25 * 1 + 0.25 * (2 / 3) + 0.25 * (3 / 5)
    assert run(images)["map"] == pytest.approx(ap07, abs=1e-12)
    assert run(images, use_07_metric=False)["map"] == pytest.approx(ap_area, abs=1e-12)
    assert average_precision(recall, precision) == pytest.approx(ap07, abs=1e-12)


def test_difficult_matches_are_ignored_and_not_counted():
    gt = [[0, 0, 9, 9], [30, 30, 39, 39]]
    # the difficult GT is matched by the top detection: neither TP nor FP; recall counts only 1 GT
    images = [img(gt, [1, 1], [[30, 30, 39, 39], [0, 0, 9, 9]], [0.9, 0.8], [1, 1], difficult=[False, True])]
    assert run(images)["ap"] == {1: 1.0}
    # missing the difficult GT costs nothing either
    images = [img(gt, [1, 1], [[0, 0, 9, 9]], [0.9], [1], difficult=[False, True])]
    assert run(images)["ap"] == {1: 1.0}


def test_classes_with_only_difficult_gt_are_left_out_of_the_mean():
    images = [img([[0, 0, 9, 9], [0, 0, 5, 5]], [1, 2], [[0, 0, 9, 9]], [0.9], [1], difficult=[False, True])]
    res = run(images)
    assert res["ap"] == {1: 1.0} and res["map"] == 1.0


def test_best_gt_already_taken_makes_a_false_positive():
    # Devkit greedy rule: the second detection's best GT is the one already matched, so it is an FP
    # even though it also overlaps the other GT by more than 0.5.
    gt = [[0, 0, 99, 99], [10, 0, 109, 99]]
    det = [[0, 0, 99, 99], [2, 0, 101, 99]]
    res = run([img(gt, [1, 1], det, [0.9, 0.8], [1, 1])], use_07_metric=False)
    assert res["ap"][1] == pytest.approx(0.5)


def test_iou_threshold_is_inclusive_and_uses_plus_one():
    # inclusive pixel boxes: GT [0,0,9,9] has area 100; det [0,0,9,4] area 50 -> IoU exactly 0.5
    images = [img([[0, 0, 9, 9]], [1], [[0, 0, 9, 4]], [1.0], [1])]
    assert run(images)["map"] == 1.0
    # without +1: area 81 vs 36 -> IoU 4/9 < 0.5
    assert run(images, pixel_inclusive=False)["map"] == 0.0


def test_wrong_label_and_no_detection_cases():
    images = [img([[0, 0, 9, 9]], [1], [[0, 0, 9, 9]], [0.9], [2]), img([[0, 0, 9, 9]], [2])]
    res = run(images)
    assert res["ap"] == {1: 0.0, 2: 0.0} and res["map"] == 0.0
    assert run([img([], [])])["map"] == 0.0  # no GT at all


def test_bad_input_is_reported():
    det, ann = img([[0, 0, 9, 9]], [1], [[0, 0, 9, 9]], [0.9], [1])
    with pytest.raises(ValueError, match="2 detection entries but 1"):
        voc_eval([det, det], [ann])
    bad = dict(det, boxes=torch.tensor([[0.0, 0.0, float("nan"), 9.0]]))
    with pytest.raises(ValueError, match="non-finite"):
        voc_eval([bad], [ann])
    with pytest.raises(ValueError, match="differ in length"):
        voc_eval([dict(det, scores=torch.tensor([0.1, 0.2]))], [ann])
    with pytest.warns(UserWarning, match="look normalised"):
        voc_eval([det], [dict(ann, boxes=torch.tensor([[0.1, 0.1, 0.5, 0.5]]))])


def devkit_ap(dets, anns, label, use07, thr=0.5):
    """A literal port of VOCevaldet.m for one class (loops, no vectorisation)."""
    gt = []
    npos = 0
    for a in anns:
        m = a["labels"].numpy() == label
        d = a.get("difficult", torch.zeros(len(m), dtype=torch.bool)).numpy()[m]
        gt.append({"BB": a["boxes"].numpy()[m].astype(float), "diff": d, "det": np.zeros(m.sum(), bool)})
        npos += int((~d).sum())
    ids, conf, bbs = [], [], []
    for i, det in enumerate(dets):
        for b, s, l in zip(det["boxes"].numpy(), det["scores"].numpy(), det["labels"].numpy()):
            if l == label:
                ids.append(i), conf.append(s), bbs.append(b.astype(float))
    order = np.argsort(-np.asarray(conf), kind="stable")
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    for d, k in enumerate(order):
        i, bb = ids[k], bbs[k]
        ovmax, jmax = -np.inf, -1
        for j, g in enumerate(gt[i]["BB"]):
            bi = [max(bb[0], g[0]), max(bb[1], g[1]), min(bb[2], g[2]), min(bb[3], g[3])]
            iw, ih = bi[2] - bi[0] + 1, bi[3] - bi[1] + 1
            if iw > 0 and ih > 0:
                ua = (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1) + (g[2] - g[0] + 1) * (g[3] - g[1] + 1) - iw * ih
                ov = iw * ih / ua
                if ov > ovmax:
                    ovmax, jmax = ov, j
        if ovmax >= thr:
            if gt[i]["diff"][jmax]:
                continue
            if not gt[i]["det"][jmax]:
                tp[d] = 1
                gt[i]["det"][jmax] = True
            else:
                fp[d] = 1
        else:
            fp[d] = 1
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    rec = tp / npos
    with np.errstate(invalid="ignore"):
        prec = tp / (fp + tp)
    if use07:
        ap = 0
        for t in np.arange(11) / 10:
            p = np.nanmax(prec[rec >= t]) if (rec >= t).any() and not np.isnan(prec[rec >= t]).all() else 0
            ap += p / 11
        return ap
    mrec = np.concatenate([[0], rec, [1]])
    mpre = np.nan_to_num(np.concatenate([[0], prec, [0]]))
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))


@pytest.mark.parametrize("use07", [True, False])
def test_matches_literal_devkit_port_on_random_data(use07):
    rng = np.random.default_rng(0)
    for trial in range(15):
        dets, anns = [], []
        for _ in range(int(rng.integers(1, 8))):
            m = int(rng.integers(0, 6))
            xy = rng.integers(0, 80, (m, 2))
            wh = rng.integers(1, 40, (m, 2))
            gt = np.concatenate([xy, xy + wh], 1).astype(float)
            labels = rng.integers(1, 4, m)
            diff = rng.random(m) < 0.2
            # detections: jittered GTs, duplicates and random boxes; scores with ties
            n = int(rng.integers(0, 10))
            src = gt[rng.integers(0, m, n)] if m else np.zeros((n, 4))
            jitter = rng.normal(0, 4, (n, 4)) * (rng.random((n, 1)) < 0.8)
            db = np.sort((src + jitter).reshape(n, 2, 2), axis=1).reshape(n, 4)
            dl = labels[rng.integers(0, m, n)] if m else rng.integers(1, 4, n)
            dl = np.where(rng.random(n) < 0.15, rng.integers(1, 4, n), dl)
            scores = np.round(rng.random(n), 1)
            anns.append({"boxes": torch.tensor(gt).reshape(-1, 4), "labels": torch.tensor(labels),
                         "difficult": torch.tensor(diff)})
            dets.append({"boxes": torch.tensor(db).reshape(-1, 4), "scores": torch.tensor(scores),
                         "labels": torch.tensor(dl)})
        res = voc_eval(dets, anns, use_07_metric=use07)
        for label, ap in res["ap"].items():
            assert ap == pytest.approx(devkit_ap(dets, anns, label, use07), abs=1e-12), (trial, label)


def test_table_and_pr_plot(tmp_path):
    images = [img([[0, 0, 9, 9], [20, 20, 30, 30]], [1, 2], [[0, 0, 9, 9], [50, 50, 60, 60]], [0.9, 0.8], [1, 2])]
    res = run(images, return_curves=True)
    table = format_ap_table(res, ["circle", "square"], title="val")
    assert "| circle |  100.0 |" in table and "| square |    0.0 |" in table and "| mAP    |   50.0 |" in table
    path = plot_pr_curves(res, tmp_path / "pr.png", ["circle", "square"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="return_curves"):
        plot_pr_curves(run(images), tmp_path / "x.png")
