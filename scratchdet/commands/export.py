"""`scratchdet export`: the whole detector (uint8 images -> detections) as ONNX and OpenVINO IR, or the
network's raw outputs (loc, logits); a torch.export program of the raw network on request."""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from ..models import export
from ._common import CLIError, load_model, writable_dir

FORMATS = ("onnx", "openvino", "torch-export")
OPTIONAL_PACKAGES = ("onnx", "onnxscript", "onnxruntime", "openvino")


def register(sub):
    p = sub.add_parser(
        "export", help="export the detector to ONNX / OpenVINO (NMS included) or the raw network",
        description="Export saved weights. With --nms (the default), model.onnx / model.xml is the whole detector: "
                    "images uint8 [B,3,H,W] at the model's input size -> num_detections [B] int64, boxes [B,K,4] "
                    "float32 (x1,y1,x2,y2 in input pixels), scores [B,K] float32, labels [B,K] int64 (0 = padding), "
                    "K = keep-top-k; each file is checked in its runtime against the eager model before it is "
                    "written. Load it with scratchdet.runtime.load. With --no-nms, model.onnx is the raw network "
                    "(normalised float images -> loc, logits) and priors.pt is saved beside it. torch-export always "
                    "writes the raw network (model.pt2).")
    p.add_argument("--weights", required=True, help="a model saved by scratchdet")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", default="onnx,torch-export",
                   help="comma-separated: onnx, openvino, torch-export (default: onnx,torch-export)")
    p.add_argument("--nms", action=argparse.BooleanOptionalAction, default=True,
                   help="the whole detector with post-processing and NMS (default); --no-nms: raw (loc, logits)")
    p.add_argument("--dynamic", action="store_true",
                   help="a dynamic batch dimension (default: fixed at --batch-size; the raw export is always dynamic)")
    p.add_argument("--half", action="store_true",
                   help="float16 weights in model.onnx and model.xml (about half the size), float32 computation: the "
                        "weights are rounded to float16 first, and each file is checked against that rounded model "
                        "with the usual tolerances; the change from the float32 model is printed. Whole detector only")
    p.add_argument("--batch-size", type=int, default=1, help="the fixed batch size without --dynamic (default 1)")
    p.add_argument("--score-threshold", type=float, default=None, help="default: the model's")
    p.add_argument("--nms-threshold", type=float, default=None, help="default: the model's")
    p.add_argument("--top-k", type=int, default=None, help="candidates per class before NMS (default: the model's)")
    p.add_argument("--keep-top-k", type=int, default=None,
                   help="detections per image, K of the outputs (default: the model's)")
    p.add_argument("--opset", type=int, default=18)
    p.set_defaults(func=run)


def parse_formats(text: str, nms: bool) -> set[str]:
    formats = {f.strip() for f in text.split(",") if f.strip()}
    unknown = formats - set(FORMATS)
    if unknown or not formats:
        raise CLIError(f"unknown --format {sorted(unknown)}; choose from {', '.join(FORMATS)}")
    if "openvino" in formats and not nms:
        raise CLIError("--format openvino exports the whole detector: drop --no-nms (or export onnx/torch-export)")
    return formats


def run(args):
    formats = parse_formats(args.format, args.nms)
    if args.half and not args.nms:
        raise CLIError("--half applies to the whole-detector export: drop --no-nms")
    if args.nms and args.opset < 18:
        raise CLIError(f"--opset {args.opset}: the whole detector needs opset >= 18 (or export --no-nms)")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    model = load_model(args.weights, "cpu")     # a bad weights file is refused before --out is made
    out = writable_dir(args.out)
    overrides = dict(score_threshold=args.score_threshold, nms_threshold=args.nms_threshold, top_k=args.top_k,
                     keep_top_k=args.keep_top_k)
    if args.nms:
        try:
            export.detector_settings(model, **overrides)
        except ValueError as exc:
            raise CLIError(f"{exc} (--score-threshold / --nms-threshold / --top-k / --keep-top-k)") from None
    if "torch-export" in formats or not args.nms:
        torch.save(model.priors.cpu(), os.path.join(out, "priors.pt"))
    if "torch-export" in formats:
        path = export.export_program(model, os.path.join(out, "model.pt2"), batch_size=args.batch_size)
        print(f"wrote {path} (raw network: loc, logits)")
    if not args.nms:
        if "onnx" in formats:
            path = export.export_onnx(model, os.path.join(out, "model.onnx"), batch_size=args.batch_size,
                                      opset=args.opset)
            print(f"wrote {path} (raw network: loc, logits; priors in priors.pt)")
        return 0
    if "onnx" in formats or "openvino" in formats:
        try:
            _export_detector(model, out, formats, args, overrides)
        except ModuleNotFoundError as exc:
            if exc.name not in OPTIONAL_PACKAGES:
                raise
            raise CLIError(f"exporting the detector needs the {exc.name} package (pip install {exc.name})") from None
    return 0


def _export_detector(model, out: str, formats: set[str], args, overrides: dict) -> None:
    onnx_path = os.path.join(out, "model.onnx")
    scratch = None
    if "onnx" not in formats:                   # OpenVINO only: the ONNX graph is an intermediate
        scratch = tempfile.TemporaryDirectory(dir=out, prefix=".export")
        onnx_path = os.path.join(scratch.name, "model.onnx")
    try:
        start = time.perf_counter()
        try:
            summary = export.export_detector_onnx(model, onnx_path, dynamic=args.dynamic, batch_size=args.batch_size,
                                                  opset=args.opset, half=args.half, **overrides)
        except export.ExportCheckError as exc:
            raise CLIError(f"model.onnx not written: {exc}") from None
        if "onnx" in formats:
            print(f"wrote {onnx_path} (whole detector; {_checked(summary, time.perf_counter() - start)})")
        if "openvino" in formats:
            start = time.perf_counter()
            try:
                summary = export.export_detector_openvino(model, onnx_path, os.path.join(out, "model.xml"))
            except export.ExportCheckError as exc:
                raise CLIError(f"model.xml not written: {exc}") from None
            print(f"wrote {summary['path']} (OpenVINO IR; {_checked(summary, time.perf_counter() - start)})")
    finally:
        if scratch is not None:
            scratch.cleanup()


def _checked(summary: dict, seconds: float) -> str:
    half = "max_score_change_from_fp32" in summary
    against = "the eager model with float16-rounded weights" if half else "the eager model"
    text = (f"checked against {against} on {summary['images']} images, {summary['detections']} detections, "
            f"max score error {summary['max_score_error']:.1e}, max box error {summary['max_box_error']:.1e} px")
    if half:
        text += (f"; float16 weights moved scores by up to {summary['max_score_change_from_fp32']:.1e} from the "
                 f"float32 model")
    return f"{text}; {seconds:.1f} s"
