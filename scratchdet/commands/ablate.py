"""`scratchdet ablate bn-lr | stem`: the paper's two ablations, one command each, on your own machine."""
from __future__ import annotations

import argparse
import os

from ..engine.ablation import Ablation, AblationError
from ..engine.config import check_finite, make_config
from ..engine.data_setup import SYNTH_PREFIX, ensure_synthetic, resolve_data
from ._common import CLIError, parse_set_options, pick_device

HELP = """Reproduce the paper's ablations from scratch, at a small scale.

  bn-lr  Table 1: BatchNorm off / in the backbone / in the head / in both, times
         lr 0.001 / 0.01 / 0.05, on a narrow VGG16 SSD (vgg16_ssd_small; --model for
         another preset). The paper: BN lets a large lr train, no BN diverges.
  stem   ResNet-18 SSD with (a) the 7x7/2 conv + max-pool, (b) no max-pool, (c) a
         stride-1 first conv, (d) the Root-ResNet root block: VOC07 mAP and the
         accuracy on small objects (under 32 px at the network input; COCO AP_S).

Every run uses the same seed, data order and number of iterations. A run whose loss
goes non-finite is stopped and reported as NAN. --out gets table.md (laid out like
the paper's, next to its numbers), results.json, one figure1_lr<lr>.png per learning
rate (training loss, gradient L2 norm and its fluctuation, one curve per setting), and
runs/<run>/ with each run's metrics.jsonl and final weights. A killed ablation
continues with --resume.

examples:
  scratchdet ablate bn-lr --out ablation/bn-lr
  scratchdet ablate stem --out ablation/stem
  scratchdet ablate bn-lr --out ablation/seeds --settings both --lrs 0.05 --seeds 0,1,2
"""


def register(sub):
    p = sub.add_parser("ablate", help="reproduce the paper's ablations (BN x lr, stem) at a small scale",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=["bn-lr", "stem"], help="which ablation")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--data", help="a VOC-layout folder with train and val splits, only read; synth:DIR generates "
                                  "the synthetic data set into DIR (default: synthetic, generated in OUT/data)")
    p.add_argument("--budget-iters", type=int, default=None,
                   help="training iterations per run (default: 300 for bn-lr, 400 for stem)")
    p.add_argument("--model", help="bn-lr: run the grid on this preset instead of vgg16_ssd_small")
    p.add_argument("--settings", help="comma-separated subset: none,head,backbone,both (bn-lr) or a,b,c,d (stem)")
    p.add_argument("--lrs", help="comma-separated learning rates (default: 0.001,0.01,0.05 for bn-lr, 0.05 for stem)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; several give mean ± std per cell")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=-1, help="DataLoader workers per run (default -1: auto)")
    p.add_argument("--device", default="auto")
    p.add_argument("--resume", action="store_true", help="skip finished runs, continue the interrupted one")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training option of every run (as scratchdet train --set)")
    p.set_defaults(func=run)


DEFAULT_BUDGET = {"bn-lr": 600, "stem": 600}   # docs/REPRODUCTION.md: both grids in < 60 min on 2 cores


def run(args):
    overrides = parse_set_options(args.overrides)
    check_finite(overrides)   # before any run starts (each run checks its whole config again)
    data = _data_folder(args.data, overrides)
    try:
        ablation = Ablation(args.kind, args.out, data=data,
                            budget_iters=DEFAULT_BUDGET[args.kind] if args.budget_iters is None else args.budget_iters, model=args.model,
                            settings=args.settings, lrs=args.lrs, seeds=args.seeds, batch_size=args.batch_size,
                            workers=args.workers, device=pick_device(args.device), resume=args.resume,
                            train_overrides=overrides)
        summary = ablation.run()
    except AblationError as exc:
        raise CLIError(str(exc)) from None
    print()
    print(summary["table"])
    print(f"wrote {args.out}/table.md, results.json, " + ", ".join(summary["figures"]))
    return 0


def _data_folder(data: str | None, overrides: dict) -> str | None:
    """--data checked as every run will read it (a VOC folder with its splits); synth:DIR generated."""
    if not data:
        return None   # the Ablation generates the synthetic set into its own OUT/data
    if data.startswith(SYNTH_PREFIX):
        return ensure_synthetic(data[len(SYNTH_PREFIX):])
    if not os.path.isdir(data):
        raise CLIError(f"data folder not found: {data} (a VOC-layout folder with train and val splits)")
    splits = {k: overrides[k] for k in ("train_split", "val_split") if k in overrides}
    resolve_data(make_config(None, {"dataset": "voc", "data_root": data, "train_split": "train",
                                    "val_split": "val", **splits}))
    return data
