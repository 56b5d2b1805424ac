"""Accuracy per training minute: each training switch off and on, under the same time budget, on
three synthetic data sets unlike one another; writes a markdown table (docs/TRAINING.md,
RESULTS_TABLE) and the raw results.

    PYTHONPATH=$PWD python scripts/training_study.py --out runs/study --budget 10m
    PYTHONPATH=$PWD python scripts/training_study.py --out /tmp/s --budget 20s --datasets elongated \\
        --runs baseline,priors --num-train 64 --num-val 16          # a quick check that it runs

Data sets (``scratchdet.data.synth.generate``, seed 0):
  demo       the demo's data set (128 px images)
  large      320 px images (the middle of 256-384), objects 6-64 px
  elongated  the demo's images with every object stretched to 1:4-1:6 (along x or y)

Runs, each from scratch with the ``demo`` training preset and ``time_budget`` (but ``recipe``):
  recipe      the preset as it is, its fixed ``max_iters`` (2400 of batch 16 for the demo; 800 of batch 32 in docs/TRAINING.md's
              "recipe" rows: ``--set batch_size=32 --set warmup_iters=100 --set max_iters=800``), no time budget
  baseline    the time budget only, every other switch off
  ema         ema=true
  priors      priors=auto
  image_size  image_size=auto
  all         all three
  bf16        cpu_bf16=auto (bfloat16 autocast where this CPU has it natively and it measures faster)
  all_bf16    all three and cpu_bf16=auto
  noema_bf16  priors=auto, image_size=auto, cpu_bf16=auto (EMA off: where it measured worse)

Scores on the validation split: VOC07 mAP (11-point, IoU 0.5) and the small-object AP (VOC07 mAP
over the objects under 32 x 32 px *in the original image*, so the same objects count whatever
input size a run picks), plus the priors' best possible recall before / after and the input size.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from scratchdet.data import synth
from scratchdet.engine.config import make_config
from scratchdet.structures.errors import ConfigError
from scratchdet.engine.trainer import Trainer
from scratchdet.evaluation import small_object_map
from scratchdet.evaluation.evaluate import evaluate_model, pixel_inclusive

DATASETS = {
    "demo": {},
    "large": {"image_size": 320, "object_size": (6, 64)},
    "elongated": {"aspect": (4, 6)},
}
RUNS = {
    "recipe": {"time_budget": ""},
    "baseline": {},
    "ema": {"ema": True},
    "priors": {"priors": "auto"},
    "image_size": {"image_size": "auto"},
    "all": {"ema": True, "priors": "auto", "image_size": "auto"},
    "bf16": {"cpu_bf16": "auto"},
    "all_bf16": {"ema": True, "priors": "auto", "image_size": "auto", "cpu_bf16": "auto"},
    "noema_bf16": {"priors": "auto", "image_size": "auto", "cpu_bf16": "auto"},
}


def make_dataset(out: str, name: str, num_train: int, num_val: int) -> str:
    root = os.path.join(out, "data", name)
    if not os.path.isfile(os.path.join(root, "synth.json")):
        synth.generate(root, num_train, num_val, seed=0, **DATASETS[name])
    return root


def run_one(root: str, run_dir: str, options: dict, budget: str, preset: str) -> dict:
    cfg = make_config(preset, {"data_root": root, "out_dir": run_dir, "time_budget": budget, **options})
    start = time.perf_counter()
    with Trainer(cfg, progress=False) as trainer:
        summary = trainer.train()
        model = trainer.evaluation_model()
        result = evaluate_model(model, trainer.val_set, device=model.priors.device, coco=False)
        sizes = [(rec.width, rec.height) for rec in trainer.val_set.records]
        reference = (sizes[0][1], sizes[0][0])        # the original images' (h, w): one size per data set
        small = small_object_map(result["detections"], result["annotations"], sizes, reference,
                                 pixel_inclusive=pixel_inclusive(trainer.val_set))
        priors = trainer.data_fit.get("priors", {})
        return {"iterations": summary["iteration"], "seconds": round(time.perf_counter() - start, 1),
                "map": result["map"], "map_small": None if small is None else small["map"],
                "num_small": 0 if small is None else small["num_small"],
                "recall_before": priors.get("before", {}).get("recall"),
                "recall_after": priors.get("after", {}).get("recall") if priors.get("refit") else None,
                "image_size": model.config.image_size}


def _cell(value, fmt="{:.3f}") -> str:
    return "-" if value is None else fmt.format(value)


def table(results: list[dict]) -> str:
    lines = ["| data set | run | iterations | seconds | VOC07 mAP | small-object AP | prior recall (before -> after) "
             "| input px |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        recall = _cell(r["recall_before"], "{:.2f}")
        if r["recall_after"] is not None:
            recall += f" -> {r['recall_after']:.2f}"
        lines.append(f"| {r['dataset']} | {r['run']} | {r['iterations']} | {r['seconds']:.0f} | {_cell(r['map'])} "
                     f"| {_cell(r['map_small'])} | {recall} | {r['image_size']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the data sets, the runs and results.md")
    parser.add_argument("--budget", default="10m", help="time_budget of every run (e.g. 10m, 90s)")
    parser.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated, of {', '.join(DATASETS)}")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, of {', '.join(RUNS)}")
    parser.add_argument("--num-train", type=int, default=1200)
    parser.add_argument("--num-val", type=int, default=300)
    parser.add_argument("--preset", default="demo", help="the training preset every run starts from")
    parser.add_argument("--seed", type=int, default=0, help="the runs' seed (the data sets keep seed 0)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every run (repeatable), e.g. --set ema_decay=0.99")
    args = parser.parse_args(argv)
    datasets = [d for d in args.datasets.split(",") if d]
    runs = [r for r in args.runs.split(",") if r]
    unknown = [d for d in datasets if d not in DATASETS] + [r for r in runs if r not in RUNS]
    if unknown:
        parser.error(f"unknown data set or run {unknown}; data sets: {list(DATASETS)}, runs: {list(RUNS)}")
    try:        # make_config parses and checks the overrides: a typo fails here, before the first run
        checked = make_config(args.preset, [f"seed={args.seed}", *args.set])
    except ConfigError as exc:
        parser.error(str(exc))
    overrides = {key: getattr(checked, key) for key in ["seed", *(item.split("=", 1)[0].strip() for item in args.set)]}
    os.makedirs(args.out, exist_ok=True)
    results = []
    for name in datasets:
        root = make_dataset(args.out, name, args.num_train, args.num_val)
        for run in runs:
            print(f"== {name} / {run} ({args.budget})", flush=True)
            result = run_one(root, os.path.join(args.out, "runs", name, run), {**RUNS[run], **overrides},
                             args.budget, args.preset)
            results.append({"dataset": name, "run": run, "seed": args.seed, **result})
            print(json.dumps(results[-1]), flush=True)
            with open(os.path.join(args.out, "results.json"), "w") as f:   # kept as it grows: a stopped study keeps its runs
                json.dump({"budget": args.budget, "preset": args.preset, "results": results}, f, indent=2)
            with open(os.path.join(args.out, "results.md"), "w") as f:
                f.write(f"Time budget {args.budget} per run, preset {args.preset}.\n\n" + table(results))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
