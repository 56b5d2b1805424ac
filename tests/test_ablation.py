"""`scratchdet ablate`: the BN x lr grid and the stem study end to end on tiny data, NAN runs, resume,
small-object metrics, bad input."""
import json
import os
import subprocess
import sys

import pytest
import torch

from scratchdet.cli import main
from scratchdet.data import synth
from scratchdet.engine.ablation import Ablation, AblationError
from scratchdet.engine.report import format_cell
from scratchdet.engine.trainer import Trainer
from scratchdet.evaluation import coco_eval, detections_to_coco, small_object_map
from test_datasets import ann, make_voc, obj

TINY = ["--set", 'model_overrides={"width": 4}', "--batch-size", "4"]   # --workers: the default, auto


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("ablation") / "data")
    synth.generate(root, 12, 6, seed=0, image_size=64)
    return root


def cli(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "scratchdet", "ablate", *args], capture_output=True, text=True,
                          timeout=900, env=env)


def test_bn_lr_grid_writes_table_figures_and_results_and_reports_nan(tiny_data, tmp_path):
    out = tmp_path / "bn"
    # lr 1e4 without BN diverges at once; the other runs still finish
    proc = cli("bn-lr", "--out", str(out), "--data", tiny_data, "--budget-iters", "3", "--settings", "none,both",
               "--lrs", "0.01,10000", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[1/4] no BN, lr 0.01, seed 0: training 3 iterations" in proc.stdout
    assert "[4/4]" in proc.stdout and "ETA" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    runs = {(r["setting"], r["lr"]): r for r in results["runs"]}
    assert runs[("none", 10000.0)]["status"] == "diverged" and runs[("none", 10000.0)]["map"] is None
    assert all(r["status"] == "done" and 0.0 <= r["map"] <= 1.0 for k, r in runs.items() if k != ("none", 10000.0))
    table = (out / "table.md").read_text()
    assert "| BN in backbone | BN in head | lr 0.01 | lr 10000 |" in table
    assert "|  |  | " in table and "| NAN |" in table and "| ✓ | ✓ |" in table
    assert "**Paper**" in table and "| 67.6 |" not in table          # lr 0.001 was not run
    for lr in ("0.01", "10000"):
        assert (out / f"figure1_lr{lr}.png").stat().st_size > 10_000
    for key in ("none_lr0.01_seed0", "both_lr10000_seed0"):
        assert (out / "runs" / key / "metrics.jsonl").exists()
    assert (out / "runs" / "both_lr0.01_seed0" / "model_final.pt").exists()


def test_a_killed_ablation_resumes_to_the_same_table(tiny_data, tmp_path, monkeypatch):
    common = dict(data=tiny_data, budget_iters=4, settings="none,both", lrs="0.01", batch_size=4, workers=0,
                  train_overrides={"model_overrides": {"width": 4}, "ckpt_every": 2}, log=lambda *_: None)
    reference = Ablation("bn-lr", str(tmp_path / "ref"), **common).run()

    real_step, calls = Trainer._step, {"n": 0}

    def dies_in_the_second_run(self, images, targets):
        calls["n"] += 1
        if calls["n"] == 4 + 3:                      # run 2, after its checkpoint at iteration 2
            raise KeyboardInterrupt("simulated kill")
        return real_step(self, images, targets)

    monkeypatch.setattr(Trainer, "_step", dies_in_the_second_run)
    with pytest.raises(KeyboardInterrupt):
        Ablation("bn-lr", str(tmp_path / "run"), **common).run()
    monkeypatch.setattr(Trainer, "_step", real_step)
    assert (tmp_path / "run" / "runs" / "none_lr0.01_seed0" / "result.json").exists()
    assert not (tmp_path / "run" / "runs" / "both_lr0.01_seed0" / "result.json").exists()
    with pytest.raises(AblationError, match="already holds ablation runs: pass --resume"):
        Ablation("bn-lr", str(tmp_path / "run"), **common).run()
    seen = []
    resumed = Ablation("bn-lr", str(tmp_path / "run"), resume=True, **{**common, "log": seen.append}).run()
    assert "finished earlier" in seen[0] and "finished earlier" not in seen[1]
    assert resumed["table"] == reference["table"]
    assert [r["map"] for r in resumed["runs"]] == [r["map"] for r in reference["runs"]]
    # resuming with another budget would mix two grids in one table: refused, naming the fix
    with pytest.raises(AblationError, match="trained for 4 iterations, not 6: resume with --budget-iters 4"):
        Ablation("bn-lr", str(tmp_path / "run"), resume=True, **{**common, "budget_iters": 6}).run()


def test_stem_study_reports_small_object_metrics(tiny_data, tmp_path):
    out = tmp_path / "stem"
    proc = cli("stem", "--out", str(out), "--data", tiny_data, "--budget-iters", "2", "--settings", "a,d", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (out / "table.md").read_text()
    assert "| Stem | VOC07 mAP | mAP, objects < 32 px | COCO AP_S | paper mAP |" in table
    assert "| (a) 7x7/2 conv + max-pool |" in table and "| 78.5 |" in table
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert {r["setting"] for r in runs} == {"a", "d"}
    for r in runs:
        assert r["num_small"] > 0 and 0.0 <= r["map_small"] <= 1.0
        assert r["coco_ap_small"] is not None and set(r["coco"]) >= {"AP", "APs"}
    assert (out / "figure1_lr0.05.png").exists()


def test_small_object_metrics_on_hand_made_detections(tmp_path):
    # two 100x100 images at a 50x50 network input: objects under 64 px here are small there
    gts = [{"boxes": torch.tensor([[10.0, 10.0, 40.0, 40.0], [0.0, 0.0, 90.0, 90.0]]), "labels": torch.tensor([1, 1]),
            "difficult": torch.tensor([False, False])},
           {"boxes": torch.tensor([[50.0, 50.0, 70.0, 80.0]]), "labels": torch.tensor([2]),
            "difficult": torch.tensor([False])}]
    dets = [{"boxes": torch.tensor([[11.0, 10.0, 40.0, 41.0], [5.0, 60.0, 95.0, 99.0]]), "scores": torch.tensor([0.9, 0.8]),
             "labels": torch.tensor([1, 1])},                        # the small GT found; a large false positive
            {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "scores": torch.tensor([0.7]), "labels": torch.tensor([2])}]
    small = small_object_map(dets, gts, [(100, 100), (100, 100)], (50, 50), pixel_inclusive=False)
    # class 1: the small GT is found and the large FP is ignored (AP 1); class 2: missed (AP 0)
    assert small["num_small"] == 2 and small["ap"] == {1: 1.0, 2: 0.0} and small["map"] == 0.5
    assert small_object_map(dets, gts, [(100, 100)] * 2, (300, 300), pixel_inclusive=False) is None  # none small

    # COCO AP_S of the same detections through our path equals pycocotools run by hand
    images = [{"id": i + 1, "file_name": f"{i}.jpg", "width": 100, "height": 100} for i in range(2)]
    annotations = [{"id": j + 1, "image_id": i + 1, "category_id": int(l), "iscrowd": 0,
                    "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                    "area": float((b[2] - b[0]) * (b[3] - b[1]))}
                   for j, (i, b, l) in enumerate((i, b, l) for i, g in enumerate(gts)
                                                  for b, l in zip(g["boxes"], g["labels"]))]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    results = detections_to_coco(dets, [1, 2])
    ours = coco_eval(str(path), results)
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    gt = COCO(str(path))
    ev = COCOeval(gt, gt.loadRes(results), "bbox")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ours["APs"] == pytest.approx(ev.stats[3]) and ours["APl"] == pytest.approx(ev.stats[5])
    assert ours["APs"] > 0


def test_a_data_set_without_small_objects_reports_n_a(tmp_path):
    entries = {f"im{i}": ann(obj("cross", 1, 1, 35, 28), size=(40, 30)) for i in range(4)}
    root = make_voc(tmp_path / "big", entries, classes=["cross"])
    with open(os.path.join(root, "ImageSets", "Main", "val.txt"), "w") as f:
        f.write("im0\nim1\n")
    summary = Ablation("stem", str(tmp_path / "out"), data=root, budget_iters=1, settings="d", batch_size=2,
                       workers=0, train_overrides={"model_overrides": {"width": 4}}, log=lambda *_: None).run()
    run = summary["runs"][0]
    assert run["map_small"] is None and run["num_small"] == 0 and run["coco_ap_small"] is None
    assert "| (d) Root-ResNet-18 |" in summary["table"] and "| n/a | n/a |" in summary["table"]


def test_cells_mean_and_spread_over_seeds():
    assert format_cell([{"status": "done", "map": 0.5}]) == "50.0"
    assert format_cell([{"status": "done", "map": m} for m in (0.5, 0.6, 0.7)]) == "60.0 ± 10.0 (3 seeds)"
    assert format_cell([{"status": "done", "map": 0.5}, {"status": "diverged", "map": None}]) == "NAN (1/2 seeds)"
    assert format_cell([]) == "—"


@pytest.mark.parametrize("args,message", [
    (["bn-lr", "--settings", "none,nope"], "unknown setting(s) ['nope']; choose from none, head, backbone, both"),
    (["stem", "--settings", "e"], "unknown setting(s) ['e']; choose from a, b, c, d"),
    (["bn-lr", "--lrs", "0.01,abc"], "--lrs: expected comma-separated numbers"),
    (["bn-lr", "--model", "nope"], "unknown model 'nope'"),
    (["stem", "--model", "vgg16_ssd300"], "--model applies to bn-lr"),
    (["bn-lr", "--data", "/no/such/folder"], "data folder not found: /no/such/folder"),
    (["bn-lr", "--budget-iters", "0"], "--budget-iters and --batch-size must be >= 1"),
])
def test_bad_input_is_one_line_and_exit_status_2(args, message, tmp_path, capsys):
    assert main(["ablate", *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unwritable_out_is_one_line_and_exit_status_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["ablate", "bn-lr", "--out", str(blocker / "out")]) == 2
    err = capsys.readouterr().err
    assert "is not writable" in err and len(err.strip().splitlines()) == 1
