"""`scratchdet export`: the network's raw outputs (loc, logits) as ONNX and/or a torch.export program."""
from __future__ import annotations

import os

import torch

from ..models.export import export_onnx, export_program
from ._common import CLIError, load_model, writable_dir


def register(sub):
    p = sub.add_parser("export", help="export the network (loc, logits) to ONNX and/or torch.export",
                       description="Export forward_raw(images) -> (loc [B,P,4], logits [B,P,C]) of saved weights. "
                                   "Post-processing (scratchdet.ops.detect) and the priors (priors.pt) are saved "
                                   "beside it so a runtime can decode.")
    p.add_argument("--weights", required=True, help="a model saved by scratchdet")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", default="onnx,torch-export",
                   help="comma-separated: onnx, torch-export (default: both)")
    p.add_argument("--batch-size", type=int, default=1, help="example batch size for tracing (dynamic in ONNX)")
    p.add_argument("--opset", type=int, default=18)
    p.set_defaults(func=run)


def run(args):
    formats = {f.strip() for f in args.format.split(",") if f.strip()}
    unknown = formats - {"onnx", "torch-export"}
    if unknown or not formats:
        raise CLIError(f"unknown --format {sorted(unknown)}; choose from onnx, torch-export")
    out = writable_dir(args.out)
    model = load_model(args.weights, "cpu")
    torch.save(model.priors.cpu(), os.path.join(out, "priors.pt"))
    if "torch-export" in formats:
        path = export_program(model, os.path.join(out, "model.pt2"), batch_size=args.batch_size)
        print(f"wrote {path}")
    if "onnx" in formats:
        path = export_onnx(model, os.path.join(out, "model.onnx"), batch_size=args.batch_size, opset=args.opset)
        print(f"wrote {path}")
    return 0
