"""Tiling study: whole-image resize vs tiled inference vs tiled training + tiled inference.

Generates a synthetic set of large images with small objects (``scratchdet.data.synth.generate``
with ``object_size`` / ``objects``), trains the ``demo`` preset twice (on whole images resized to
the network, and on native-resolution tiles: ``train_tile``), evaluates both on the whole
validation images (VOC07 mAP at IoU 0.5), and writes a markdown table.

    PYTHONPATH=$PWD python scripts/tiling_study.py --out runs/tiling_study --iters 300

Small by default (the figures in docs/DEPLOY_TILING.md came from a 2-core machine shared with
other jobs); raise ``--train``, ``--iters`` and ``--image-size`` on a real machine.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from scratchdet.data import SSDTransform, VOCDataset, synth
from scratchdet.engine.tiled_eval import evaluate_tiled
from scratchdet.evaluation.evaluate import evaluate_model
from scratchdet.models.io import load


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/tiling_study")
    p.add_argument("--image-size", type=int, default=1024, help="side of the generated images (1024)")
    p.add_argument("--object-size", default="8:20", help="object sizes in px, MIN:MAX (8:20)")
    p.add_argument("--objects", default="5:30", help="objects per image, LO:HI (5:30)")
    p.add_argument("--train", type=int, default=200, help="training images (200)")
    p.add_argument("--val", type=int, default=20, help="validation images (20)")
    p.add_argument("--iters", type=int, default=300, help="training iterations of each run (300)")
    p.add_argument("--batch", type=int, default=32, help="training batch (32, the demo's)")
    p.add_argument("--tile", type=int, default=128, help="tile side in px; the demo network is 128 px (128)")
    p.add_argument("--overlap", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pretrained", metavar="FILE",
                   help="instead of the two training runs: evaluate this saved model (e.g. `scratchdet demo`'s "
                        "model_final.pt, trained on the 128 px synthetic set) whole-image vs tiled")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a training option for both runs (scratchdet train --set), e.g. warmup_iters=30")
    return p.parse_args(argv)


def pair(text: str, kind=float) -> tuple:
    lo, hi = text.split(":")
    return kind(lo), kind(hi)


def train(data: str, out: str, iters: int, batch: int, extra: list[str]) -> float:
    """One `scratchdet train` run (demo preset, no periodic evaluation); its wall time in seconds."""
    if os.path.isfile(os.path.join(out, "model_final.pt")):
        return float("nan")          # reused from an earlier run of the study
    argv = [sys.executable, "-m", "scratchdet", "train", "--config", "demo", "--data", data, "--out", out,
            "--no-progress", "--set", f"max_iters={iters}", "--set", "val_split=", "--set", f"eval_every={iters}",
            "--set", f"ckpt_every={iters}", "--set", f"batch_size={batch}", *extra]
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def main(argv=None) -> int:
    args = parse_args(argv)
    data = os.path.join(args.out, "data")
    if not os.path.isfile(os.path.join(data, "synth.json")):
        synth.generate(data, args.train, args.val, seed=args.seed, image_size=args.image_size,
                       object_size=pair(args.object_size), objects=pair(args.objects, int), aspect=(1.0, 1.0))
    if args.pretrained:
        return evaluate_pretrained(args, data)
    whole_run, tile_run = os.path.join(args.out, "whole"), os.path.join(args.out, "tiled")
    options = [a for item in args.set for a in ("--set", item)]
    seconds = {"whole": train(data, whole_run, args.iters, args.batch, options),
               "tiled": train(data, tile_run, args.iters, args.batch, [*options, "--set", f"train_tile={args.tile}"])}
    whole_model = load(os.path.join(whole_run, "model_final.pt")).eval()
    tile_model = load(os.path.join(tile_run, "model_final.pt")).eval()
    val = VOCDataset(data, split="val", transform=SSDTransform.from_config(whole_model.config))

    rows = []
    r, t = timed(evaluate_model, whole_model, val)
    rows.append(("whole images", "whole image resized", r["map"], t))
    r, t = timed(evaluate_tiled, whole_model, val, args.tile, args.overlap)
    rows.append(("whole images", f"tiled {args.tile}", r["map"], t))
    r, t = timed(evaluate_model, tile_model, val)
    rows.append((f"tiles {args.tile}", "whole image resized", r["map"], t))
    r, t = timed(evaluate_tiled, tile_model, val, args.tile, args.overlap)
    rows.append((f"tiles {args.tile}", f"tiled {args.tile}", r["map"], t))
    r, t = timed(evaluate_tiled, tile_model, val, args.tile, args.overlap, whole_image=True)
    rows.append((f"tiles {args.tile}", f"tiled {args.tile} + whole-image pass", r["map"], t))

    lines = [f"Synthetic set: {args.train} train / {len(val)} val images of {args.image_size} px, objects "
             f"{args.object_size} px, {args.objects} per image; demo preset (128 px network), {args.iters} "
             f"iterations of batch {args.batch} per run{''.join(', ' + s for s in args.set)}; tiles {args.tile} px, "
             f"overlap {args.overlap}.",
             "",
             f"Training time: whole images {seconds['whole']:.0f} s, tiles {seconds['tiled']:.0f} s.",
             "",
             "| trained on | inference | VOC07 mAP@0.5 | eval time (s) |",
             "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {m:.4f} | {t:.1f} |" for a, b, m, t in rows]
    table = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "tiling_study.md"), "w") as f:
        f.write(table)
    print(table)
    return 0


def evaluate_pretrained(args, data: str) -> int:
    """A model trained elsewhere, on the large validation images: whole-image resize vs tiled."""
    model = load(args.pretrained).eval()
    val = VOCDataset(data, split="val", transform=SSDTransform.from_config(model.config))
    rows = []
    r, t = timed(evaluate_model, model, val)
    rows.append(("whole image resized", r["map"], t))
    r, t = timed(evaluate_tiled, model, val, args.tile, args.overlap)
    rows.append((f"tiled {args.tile}", r["map"], t))
    r, t = timed(evaluate_tiled, model, val, args.tile, args.overlap, whole_image=True)
    rows.append((f"tiled {args.tile} + whole-image pass", r["map"], t))
    lines = [f"Model: {args.pretrained}; {len(val)} val images of {args.image_size} px, objects {args.object_size} px, "
             f"{args.objects} per image; tiles {args.tile} px, overlap {args.overlap}.", "",
             "| inference | VOC07 mAP@0.5 | eval time (s) |", "|---|---|---|"]
    lines += [f"| {a} | {m:.4f} | {t:.1f} |" for a, m, t in rows]
    table = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "tiling_study_pretrained.md"), "w") as f:
        f.write(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
