"""`scratchdet train`: train a detector from scratch (single process or torchrun DDP)."""
from __future__ import annotations

import argparse
import json
import os

from ..data import BadImageError
from ..engine.config import TRAIN_PRESETS, make_config
from ..engine.data_setup import check_synth_target, resolve_data
from ..engine.distributed import cleanup, init_distributed
from ..engine.trainer import NonFiniteTrainingError, Trainer
from ..structures.errors import DataError, UserError
from ._common import CLIError, last_line, pick_device, writable_dir

HELP = """Train an SSD detector from scratch.

Pick a training preset with --config (see the list below), point --data at the
data (a VOC-layout folder, a YOLO data.yaml, or a COCO instances json or a folder
holding annotations/; --data is only read: synth:DIR generates the synthetic
data set into DIR), and override any option with --set key=value. Any
backbone: --set model=timm:<name>. Under torchrun it runs DDP (NCCL on GPUs,
gloo on CPU; SyncBN with --set model_overrides='{"norm": "syncbn"}').

examples:
  scratchdet train --config demo --data synth:data/synth --out runs/demo
  scratchdet train --config demo --data my_data/data.yaml --set model=timm:mobilenetv3_large_100
  scratchdet train --config demo --data coco/annotations/instances_train2017.json \
      --set train_split=train2017 --set val_split=val2017
  scratchdet train --config root_resnet34_voc --data VOC2007,VOC2012 --out runs/r34
  torchrun --nproc_per_node 8 -m scratchdet train --config root_resnet34_voc --data VOC2007,VOC2012
  scratchdet train --config demo --data synth:data/synth --out runs/demo --resume
"""


def register(sub):
    p = sub.add_parser("train", help="train a detector from scratch", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="demo",
                   help=f"training preset: {', '.join(sorted(TRAIN_PRESETS))} (default: demo)")
    p.add_argument("--data", help="the data: a VOC-layout folder (comma-separated roots are joined, e.g. 07+12), "
                                  "a YOLO data.yaml, a COCO instances json / a folder holding annotations/, "
                                  "or synth:DIR to generate the synthetic data set into DIR")
    p.add_argument("--out", help="run folder for checkpoints, metrics.jsonl and plots (default: runs/<config>)")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CKPT",
                   help="resume from CKPT, or from the newest checkpoint in --out when no path is given")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training option, e.g. --set lr=0.01 --set max_iters=2000 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to metrics.jsonl)")
    p.set_defaults(func=run)


def make_train_config(args):
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data_root={args.data}")
    overrides.append(f"out_dir={args.out or os.path.join('runs', args.config)}")
    return make_config(args.config, overrides)


def bad_image_error(exc: BadImageError, skipping: bool) -> DataError:
    """The first bad image, and the switch that trains without it (when it is not on already)."""
    if skipping:
        return DataError(last_line(str(exc)))
    return DataError(f"{last_line(str(exc))}; to leave bad images out (each is listed in a warning), "
                     "pass --set skip_bad_images=true")


def run(args):
    cfg = make_train_config(args)
    source = resolve_data(cfg)   # the data's errors before anything is written (the run folder included)
    writable_dir(cfg.out_dir)
    info = init_distributed(pick_device(args.device))
    if source.synthetic and info.is_main and not check_synth_target(source.root):
        print(f"generating the synthetic data set into {source.root}", flush=True)
    finished = False
    try:
        with Trainer(cfg, dist_info=info, progress=not args.no_progress) as trainer:
            summary = trainer.train(resume=args.resume)
        finished = True
    except BadImageError as exc:
        raise bad_image_error(exc, cfg.skip_bad_images) from None
    except UserError:
        raise
    except (ValueError, NonFiniteTrainingError) as exc:
        raise CLIError(str(exc)) from None
    finally:
        cleanup(info, finished=finished)
    if info.is_main:
        printable = {k: v for k, v in summary.items() if k != "ap"}
        print(json.dumps(printable, indent=2))
    return 0 if not summary.get("interrupted") else 130
