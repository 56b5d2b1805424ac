"""`scratchdet compare`: design a detector for your data and your hardware."""
from __future__ import annotations

import argparse
import os

import torch

from ..engine.compare import DEMO_BATCH_SIZE, RUNTIMES, Comparison, parse_budget, parse_candidates, parse_seeds, parse_sizes
from ..engine.config import make_config
from ..engine.data_setup import SYNTH_PREFIX, resolve_data
from ._common import CLIError, parse_set_options, pick_device

HELP = """Train several detectors from scratch on your data with the same recipe and budget,
score them on your validation split and time them on this machine; the answer is the
accuracy / latency Pareto front.

--models takes, comma-separated:
  a preset            root_resnet_demo, root_resnet18_ssd300, ... (an unknown name lists them)
  a Root-ResNet spec  root_resnet:w=16,d=1-1-1-1,r=8,rs=1,s=3,i=128
                      w width, d blocks per stage, r root width, rs root stride
                      (1|2), s backbone stages as sources (1-3), e extra-layer
                      channels, i input size, hbn BN in the head (0|1)
  a timm backbone     timm:mobilenetv3_small_050 (random weights)
  a user module       path/to/file.py:Factory (Factory() returns a backbone nn.Module whose
                      forward gives feature maps, finest first)
  auto:N              N Root-ResNet specs spread from a few ms to ScratchDet300

--budget is per run: a time (10m, 90s: the schedule is laid out for the time, the fair
default on one machine) or iterations (2000it). Every run is scored (VOC07 mAP, AP on
small objects, AP per class) and timed (batch 1 latency and batch 8 throughput, eager,
FastPredictor, exported ONNX Runtime / OpenVINO, the same threads); params, FLOPs and
peak memory of training and inference are reported. --out gets report.md, pareto.png,
results.json and runs/<run>/; a killed comparison continues with --resume.

examples:
  scratchdet synth --out data/shapes
  scratchdet compare --data data/shapes --models auto:4 --budget 5m --out compare/auto
  scratchdet compare --data data/shapes --budget 10m --out compare/mobile \\
      --models root_resnet:w=16,rs=2,root_resnet_demo,timm:mobilenetv3_small_050
"""


def register(sub):
    p = sub.add_parser("compare", help="train, score and time several detectors on your data: the Pareto front",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="what scratchdet train --data takes (only read); synth:DIR "
                                                 "generates the synthetic data set into DIR")
    p.add_argument("--models", required=True, help="comma-separated candidates (see above)")
    p.add_argument("--budget", required=True, help="per run: a time (10m, 90s) or iterations (2000it)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="auto", help="training and timing device: cpu, cuda (default: auto)")
    p.add_argument("--input-size", help="comma-separated input sizes; each candidate runs at each "
                                        "(default: the model's own; 128 for timm and user backbones)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; the report shows the mean mAP")
    p.add_argument("--runtimes", default=",".join(RUNTIMES),
                   help=f"deployment paths to time (default: {','.join(RUNTIMES)}; missing runtimes are skipped)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for training and for every runtime timed (default: torch's, "
                        "usually the cores; on a busy machine 1 gives steadier figures)")
    p.add_argument("--timing-rounds", type=int, default=7, help="interleaved timing rounds at batch 1 (default 7)")
    p.add_argument("--batch-size", type=int, default=DEMO_BATCH_SIZE,
                   help=f"training batch size (default {DEMO_BATCH_SIZE}, the demo preset's)")
    p.add_argument("--workers", type=int, default=-1, help="DataLoader workers per run (default -1: auto)")
    p.add_argument("--resume", action="store_true", help="skip finished runs, continue the interrupted one")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training option of every run (as scratchdet train --set)")
    p.set_defaults(func=run)


def run(args):
    # every argument is checked before anything is written
    overrides = parse_set_options(args.overrides)
    budget = parse_budget(args.budget)
    candidates = parse_candidates(args.models, parse_sizes(args.input_size))
    seeds = parse_seeds(args.seeds)
    runtimes = tuple(r.strip() for r in args.runtimes.split(",") if r.strip())
    device = pick_device(args.device)
    if args.threads is not None and args.threads < 1:
        raise CLIError(f"--threads must be >= 1, got {args.threads}")
    data = args.data
    if not data.startswith(SYNTH_PREFIX) and not os.path.exists(data):
        raise CLIError(f"data not found: {data} (a VOC/COCO/YOLO data set with train and val splits)")
    splits = {k: overrides[k] for k in ("train_split", "val_split", "dataset") if k in overrides}
    resolve_data(make_config(None, {"dataset": "auto", "data_root": data, **splits}))
    if args.threads:
        torch.set_num_threads(args.threads)
    comparison = Comparison(data, candidates, budget, args.out, seeds=seeds, device=device, runtimes=runtimes,
                            batch_size=args.batch_size, workers=args.workers, timing_rounds=args.timing_rounds,
                            resume=args.resume, train_overrides=overrides)
    summary = comparison.run()
    print()
    print(summary["report"])
    written = ["report.md", "results.json"] + (["pareto.png"] if summary["plot"] else [])
    print(f"wrote {', '.join(os.path.join(args.out, w) for w in written)}")
    return 0
