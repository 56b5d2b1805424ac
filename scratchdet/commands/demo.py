"""`scratchdet demo`: the README's main job, end to end on a 2-core CPU in about 10 minutes.

Generates the synthetic shapes data set, trains a small Root-ResNet SSD from
scratch (root_resnet_demo: BN throughout the backbone, plain predictor convs;
lr 0.05), evaluates VOC07 mAP on the held-out split, and writes a picture of
detections, the training curves and summary.json.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from ..engine.config import make_config
from ..engine.data_setup import ensure_synthetic
from ..engine.distributed import init_distributed
from ..engine.trainer import Trainer
from ..engine.visualize import draw_detections, plot_run, save_grid
from ..structures.image import read_image
from ._common import CLIError, pick_device, writable_dir


def register(sub):
    p = sub.add_parser("demo", help="train a small detector from scratch on synthetic data, evaluate, draw",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--train", type=int, default=None, help="synthetic training images")
    p.add_argument("--val", type=int, default=None, help="synthetic held-out images")
    p.add_argument("--max-iters", type=int, default=None, help="training iterations")
    p.add_argument("--time", default=None, metavar="DURATION",
                   help="a wall-clock budget for the training (e.g. 5m, 1h30m, 90s): as many iterations as fit, "
                        "the final evaluation included (the training option time_budget)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny data, a few iterations")
    p.add_argument("--device", default="auto")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training option of the demo preset")
    p.set_defaults(func=run)


DEFAULTS = {"train": 1200, "val": 300, "max_iters": None}
QUICK = {"train": 48, "val": 16, "max_iters": 6}


def run(args):
    t0 = time.perf_counter()
    out = args.out
    base = QUICK if args.quick else DEFAULTS
    n_train = args.train or base["train"]
    n_val = args.val or base["val"]
    if n_train < 1 or n_val < 1:
        raise CLIError(f"--train and --val must be >= 1, got {n_train} and {n_val}")
    data_dir = os.path.join(out, "data")   # the demo's own folder: the one place it generates data into
    overrides = [f"data_root={data_dir}", f"out_dir={os.path.join(out, 'run')}",
                 f"seed={args.seed}"]
    max_iters = args.max_iters or base["max_iters"]
    if max_iters:
        overrides += [f"max_iters={max_iters}", f"warmup_iters={min(100, max_iters // 5)}",
                      "eval_every=0", f"ckpt_every={max(1, max_iters // 2)}"]
    if args.quick:
        overrides += ["batch_size=8", "workers=0"]
    if args.time:
        overrides.append(f"time_budget={args.time}")
    overrides += list(args.overrides)  # the user's --set wins
    cfg = make_config("demo", overrides)
    if cfg.data_root != data_dir:
        raise CLIError(f"--set data_root: the demo generates its own data in {data_dir}; "
                       "to train on other data use scratchdet train --config demo --data ...")
    writable_dir(out)   # after the options are checked: a typo leaves nothing behind

    print(f"[1/4] generating {n_train}+{n_val} synthetic images in {cfg.data_root}")
    ensure_synthetic(cfg.data_root, n_train, n_val, seed=args.seed)
    t_data = time.perf_counter() - t0

    length = f"as long as fits in {args.time}" if args.time else f"for {cfg.max_iters} iterations"
    print(f"[2/4] training {cfg.model} from scratch {length} (batch {cfg.batch_size}, "
          f"lr {cfg.lr}, {torch.get_num_threads()} threads)")
    try:
        trainer = Trainer(cfg, dist_info=init_distributed(pick_device(args.device)))
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    with trainer:
        summary = trainer.train()
    if summary.get("interrupted"):
        print(f"interrupted; resume with: scratchdet train --config demo --data {cfg.data_root} "
              f"--out {cfg.out_dir} --resume")
        return 130

    print("[3/4] evaluating on the held-out split")
    voc07 = float(summary.get("map", float("nan")))
    model = trainer.evaluation_model().eval()     # the weight EMA with --set ema=true

    print("[4/4] drawing detections and training curves")
    val_raw = trainer.val_set
    pictures = []
    for i in range(min(8, len(val_raw))):
        image = read_image(val_raw.records[i].image_path)
        pred = model.predict([image])[0]
        pictures.append(draw_detections(image, pred["boxes"], pred["labels"], pred["scores"], trainer.classes, 0.4))
    det_png = save_grid(pictures, os.path.join(out, "detections.png"))
    plots = plot_run(cfg.out_dir, os.path.join(out, "plots"))

    result = {
        "voc07_map": voc07,
        "ap_per_class": {trainer.classes[int(k) - 1]: v for k, v in summary.get("ap", {}).items()},
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "data_seconds": round(t_data, 1),
        "train_seconds": round(summary.get("train_seconds", 0.0), 1),
        "iterations": summary["iteration"],
        "time_budget": summary.get("time_budget"),     # the budget and how many iterations fitted
        "skipped_steps": summary.get("skipped_steps", 0),
        "model": cfg.model,
        "parameters": sum(p.numel() for p in model.parameters()),
        "image_size": model.config["image_size"],
        "num_train": n_train,
        "num_val": n_val,
        "threads": torch.get_num_threads(),
        "detections_png": det_png,
        "plots": plots,
        "weights": os.path.join(cfg.out_dir, "model_final.pt"),
    }
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"VOC07 mAP on {n_val} held-out images: {voc07:.4f}  ({result['wall_seconds']:.0f} s in all)")
    print(f"wrote {out}/summary.json, {det_png}, {out}/plots/")
    return 0
