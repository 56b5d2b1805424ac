"""`scratchdet train`: train a detector from scratch (single process or torchrun DDP)."""
from __future__ import annotations

import argparse
import json
import os

from ..cli import CLIError

HELP = """Train an SSD detector from scratch.

Pick a training preset with --config (see the list below), point --data at the
data (a VOC-layout folder, a YOLO data.yaml, or a COCO instances json or a folder
holding annotations/), and override any option with --set key=value. Any
backbone: --set model=timm:<name>. Under torchrun it runs DDP (NCCL on GPUs,
gloo on CPU; SyncBN with --set model_overrides='{"norm": "syncbn"}').

examples:
  scratchdet train --config demo --data data/synth --out runs/demo
  scratchdet train --config demo --data my_data/data.yaml --set model=timm:mobilenetv3_large_100
  scratchdet train --config demo --data coco/annotations/instances_train2017.json \
      --set train_split=train2017 --set val_split=val2017
  scratchdet train --config root_resnet34_voc --data VOC2007,VOC2012 --out runs/r34
  torchrun --nproc_per_node 8 -m scratchdet train --config root_resnet34_voc --data VOC2007,VOC2012
  scratchdet train --config demo --data data/synth --out runs/demo --resume
"""


def register(sub):
    from ..engine.config import PRESETS

    p = sub.add_parser("train", help="train a detector from scratch", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="demo", help=f"training preset: {', '.join(sorted(PRESETS))} (default: demo)")
    p.add_argument("--data", help="the data: a VOC-layout folder (comma-separated roots are joined, e.g. 07+12), "
                                  "a YOLO data.yaml, or a COCO instances json / a folder holding annotations/")
    p.add_argument("--out", help="run folder for checkpoints, metrics.jsonl and plots (default: runs/<config>)")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CKPT",
                   help="resume from CKPT, or from the newest checkpoint in --out when no path is given")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training option, e.g. --set lr=0.01 --set max_iters=2000 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to metrics.jsonl)")
    p.set_defaults(func=run)


def make_train_config(args):
    from ..engine.config import make_config

    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data_root={args.data}")
    overrides.append(f"out_dir={args.out or os.path.join('runs', args.config)}")
    try:
        return make_config(args.config, overrides)
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def run(args):
    from ._common import pick_device, writable_dir
    from ..engine.distributed import cleanup, init_distributed
    from ..engine.trainer import NonFiniteTrainingError, Trainer

    from ..engine.data_setup import dataset_kind

    cfg = make_train_config(args)
    kind = dataset_kind(cfg)
    if kind in ("voc", "yolo") and not cfg.data_root:
        raise CLIError("--data is required (a VOC-layout folder, a YOLO data.yaml or a COCO json)")
    if kind == "voc":
        for root in cfg.data_root.split(","):
            if not os.path.isdir(root):
                raise CLIError(f"data folder not found: {root}")
    elif kind in ("yolo", "coco") and cfg.data_root and not os.path.exists(cfg.data_root):
        raise CLIError(f"data not found: {cfg.data_root}")
    writable_dir(cfg.out_dir)
    info = init_distributed(pick_device(args.device))
    finished = False
    try:
        with Trainer(cfg, dist_info=info, progress=not args.no_progress) as trainer:
            summary = trainer.train(resume=args.resume)
        finished = True
    except (FileNotFoundError, ValueError, NonFiniteTrainingError) as exc:
        raise CLIError(str(exc)) from None
    finally:
        cleanup(info, finished=finished)
    if info.is_main:
        printable = {k: v for k, v in summary.items() if k != "ap"}
        print(json.dumps(printable, indent=2))
    return 0 if not summary.get("interrupted") else 130
