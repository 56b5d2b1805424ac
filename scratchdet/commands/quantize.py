"""`scratchdet quantize`: saved fp32 weights -> an int8 detector for the CPU, calibrated on your images.

The file it writes runs with `scratchdet detect --int8 --weights q.pt` and `scratchdet eval --weights q.pt`
(or scratchdet.models.quantize.load_quantized in Python)."""
from __future__ import annotations

import argparse
import os
import time

import torch

from ..engine import timing
from ..engine.sources import IMAGE_EXTS
from ..models.fast_inference import FastPredictor
from ..models.quantize import OBSERVERS, is_quantized_file, load_quantized, quantize
from ..structures.image import read_image
from ._common import CLIError, existing_dir, existing_file, load_model

__all__ = ["register", "run", "calibration_files", "load_int8", "load_fp32", "load_any", "speed_line"]


def register(sub):
    p = sub.add_parser("quantize", help="post-training int8 quantisation for CPU inference",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="a model saved by scratchdet (fp32)")
    p.add_argument("--calib", required=True, metavar="DATA",
                   help="calibration images: a folder of images, or a VOC-layout folder (its JPEGImages/)")
    p.add_argument("--out", required=True, help="the int8 file to write (e.g. q.pt)")
    p.add_argument("--num-images", type=int, default=64,
                   help="calibration images to use, the first N by file name (default 64)")
    p.add_argument("--observer", choices=OBSERVERS, default="minmax",
                   help="activation range: minmax (default) or percentile (0.01%% clipped at each end)")
    p.add_argument("--float-layers", default="",
                   help="comma-separated convs kept in fp32: first, heads, or fused conv names "
                        "(default: none, every conv int8)")
    p.add_argument("--no-speed-check", dest="speed_check", action="store_false",
                   help="skip timing the int8 network against the fp32 FastPredictor on this CPU (a few seconds)")
    p.set_defaults(func=run)


def calibration_files(folder: str, limit: int) -> list[str]:
    """The first ``limit`` image files (by name) of ``folder`` or of its VOC ``JPEGImages/``."""
    existing_dir(folder, "calibration folder (--calib)")
    images = os.path.join(folder, "JPEGImages")
    root = images if os.path.isdir(images) else folder
    files = sorted(os.path.join(dirpath, f) for dirpath, _, names in os.walk(root) for f in names
                   if f.lower().endswith(IMAGE_EXTS))
    if not files:
        raise CLIError(f"--calib {folder}: no images ({', '.join(IMAGE_EXTS)}) in {root}")
    return files[:limit]


def load_int8(path: str):
    """The int8 predictor saved at ``path``; CLIError when it is not one (e.g. fp32 weights)."""
    existing_file(path, "int8 weights file")
    if not is_quantized_file(path):
        raise CLIError(f"{path} is not an int8 file; make one with scratchdet quantize --weights {path} "
                       "--calib DATA --out q.pt")
    return load_quantized(path)


def load_fp32(path: str, device: str):
    """fp32 weights; CLIError naming --int8 when ``path`` is an int8 file."""
    existing_file(path, "weights file")
    if is_quantized_file(path):
        raise CLIError(f"{path} is an int8 file (scratchdet quantize): add --int8")
    return load_model(path, device)


def load_any(path: str, device: str):
    """fp32 weights (on ``device``) or an int8 file (CPU), whichever ``path`` holds."""
    existing_file(path, "weights file")
    return load_quantized(path) if is_quantized_file(path) else load_model(path, device)


def run(args):
    if args.num_images < 1:
        raise CLIError(f"--num-images must be >= 1, got {args.num_images}")
    float_layers = [x.strip() for x in args.float_layers.split(",") if x.strip()]
    files = calibration_files(args.calib, args.num_images)
    out_dir = os.path.dirname(os.path.abspath(args.out))
    existing_dir(out_dir, "folder of --out")
    model = load_model(args.weights, "cpu")
    t0 = time.perf_counter()
    predictor = quantize(model, [read_image(f) for f in files], observer=args.observer, float_layers=float_layers)
    predictor.save(args.out)
    report = predictor.report
    print(f"wrote {args.out}: {len(report.int8)} int8 convs ({len(report.uint8_outputs)} pass uint8 on), "
          f"{len(report.float_kept)} kept fp32, calibrated on {len(files)} images ({args.observer}) "
          f"in {time.perf_counter() - t0:.1f} s")
    if args.speed_check:
        print(speed_line(model, predictor, read_image(files[0])))
    return 0


def speed_line(model, predictor, image, rounds: int = 5) -> str:
    """One line: the int8 network against the fp32 FastPredictor's on this CPU (one image, the
    network alone, interleaved medians), and which to ship here. Whether int8 pays depends on the
    CPU: 2.1x on a Zen 4 with VNNI, 0.89-1.02x on an AVX2-only Zen 2 (benchmarks/RESULTS.md)."""
    fast = FastPredictor(model)
    batch = predictor.preprocess([image])[0]
    runners = {"int8": lambda: predictor.forward_raw(batch),
               "fp32": lambda: fast.model.forward_raw(fast._prepare(batch))}
    ms = timing.medians_ms(timing.time_interleaved(runners, rounds))
    speedup = ms["fp32"] / ms["int8"]
    line = (f"on this CPU ({torch.get_num_threads()} threads, one image, the network alone): int8 {ms['int8']:.1f} ms, "
            f"fp32 FastPredictor {ms['fp32']:.1f} ms: {speedup:.2f}x")
    if speedup < 1.0:
        line += ("; int8 is slower than fp32 here (CPUs without fast int8 dot products, e.g. AVX2-only ones): "
                 "scratchdet detect without --int8 is the faster choice on this machine")
    return line
