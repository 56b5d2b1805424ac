"""Interleaved A/B timing of training steps, for a noisy shared machine (pytest-benchmark runs one
path after the other, so load that comes and goes lands on one side).

    python benchmarks/ab_train.py                       # fast vs stock, the two models of bench_train
    python benchmarks/ab_train.py --backbones           # root_resnet_demo vs two timm backbones
    python benchmarks/ab_train.py --rounds 15 --json out.json

Every round runs one step of each path in a shuffled order; the report is the median step time
per path and the ratio of medians. The paths share nothing but the input batch.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train import BACKBONES, FAST_VS_STOCK, train_model, train_step  # noqa: E402


def interleave(steps: dict, rounds: int, warmup: int = 1, seed: int = 0) -> dict:
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {k: [] for k in steps}
    order, rng = list(steps), random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for k in order:
            t0 = time.perf_counter()
            steps[k]()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", action="store_true", help="time the 'train backbones' group instead")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--json", help="also write the medians here")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    report = {"machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "groups": []}
    if args.backbones:
        steps = {name: train_step(train_model(name, 128), 32, 128) for name in BACKBONES}
        med = interleave(steps, args.rounds)
        for name, t in med.items():
            print(f"{name:32s} {1000 * t:8.1f} ms/step  {32 / t:6.1f} images/s")
        report["groups"].append({"group": "train backbones B=32 128 px", "median_s": med})
    else:
        for name, batch, size in FAST_VS_STOCK:
            steps = {path: train_step(train_model(name, size, fused=path == "fast"), batch, size) for path in ("fast", "stock")}
            med = interleave(steps, args.rounds if size < 300 else max(3, args.rounds // 2))
            print(f"{name} B={batch} {size} px: fast {1000 * med['fast']:.1f} ms, stock {1000 * med['stock']:.1f} ms, "
                  f"fast/stock speed-up {med['stock'] / med['fast']:.2f}x")
            report["groups"].append({"group": f"{name} B={batch} {size} px", "median_s": med})
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
