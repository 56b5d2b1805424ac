"""Per-layer profile of FastPredictor's network against OpenVINO on the same exported ScratchDet300.

    python benchmarks/profile_runtimes.py [--batch 1] [--runs 20] [--top 10] [--json out.json] [--int8]

``--int8`` profiles the int8 networks instead: ours (``scratchdet.quantize``, every ``Int8Conv``
timed) against OpenVINO's NNCF-quantised model, both calibrated on bench_int8.py's 32 images.

Ours: forward hooks time every fused conv (FusedConvAct) of ``FastPredictor``'s network and
record its backend (Winograd, prepacked oneDNN, conv_bn_act). OpenVINO: the CPU plugin's own
per-node counters (``PERF_COUNT``), which name the primitive it ran (e.g. ``brgconv_avx512``).
The two graphs do not share node names (the exporter renames), so layers are matched by their
signature: input channels, output channels, output height and width, and stride; layers with
the same signature (repeated ResNet blocks) are summed and counted. The network is the one
``bench_runtimes.py`` times, with the same thread count for both.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_int8 import calibration_images  # noqa: E402
from bench_runtimes import _model  # noqa: E402

import scratchdet  # noqa: E402

from scratchdet.models.conv_backends import backend_name  # noqa: E402
from scratchdet.models.export import export_onnx  # noqa: E402
from scratchdet.models.fast_inference import FastPredictor  # noqa: E402
from scratchdet.models.fused_layers import FusedConvAct  # noqa: E402
from scratchdet.models.quantize import Int8Conv  # noqa: E402


BACKEND_LABELS = {"winograd": "winograd F(4,3)", "winograd-f63": "winograd F(6,3)",
                  "onednn-prepacked": "prepacked oneDNN"}


def _signature(cin, cout, h, w, stride):
    return f"{cin}->{cout} @{h}x{w} s{stride}"


def _int8_label(conv: Int8Conv, x, residual) -> str:
    out = "uint8 out" if conv.emit_uint8 else "fp32 out"
    return f"oneDNN int8, {str(x.dtype).removeprefix('torch.')} in, {out}"


def profile_ours(batch: int, runs: int, winograd: bool | None = None, int8: bool = False) -> dict:
    if int8:
        model = _model()
        predictor = scratchdet.quantize(model, calibration_images())
        net, forward = predictor.model, predictor.forward_raw
        x = torch.randn(batch, 3, 300, 300).contiguous(memory_format=torch.channels_last)
        timed, label = Int8Conv, _int8_label
    else:
        fast = FastPredictor(_model(), winograd=winograd)
        net = fast.model
        forward = net.forward_raw
        x = fast._prepare(torch.randn(batch, 3, 300, 300))
        timed, label = FusedConvAct, backend_name
    per_run, starts = collections.defaultdict(list), {}
    hooks = []
    for name, m in net.named_modules():
        if isinstance(m, timed):
            def pre(mod, args, name=name):
                starts[name] = time.perf_counter()

            def post(mod, args, kwargs, out, name=name):
                elapsed = time.perf_counter() - starts[name]
                residual = kwargs.get("residual", args[1] if len(args) > 1 else None)
                per_run[name].append((elapsed, args[0].shape, out.shape, label(mod, args[0], residual)))
            hooks += [m.register_forward_pre_hook(pre), m.register_forward_hook(post, with_kwargs=True)]
    with torch.inference_mode():
        for _ in range(3):
            forward(x)
        per_run.clear()
        totals = []
        for _ in range(runs):
            t0 = time.perf_counter()
            forward(x)
            totals.append(time.perf_counter() - t0)
    for h in hooks:
        h.remove()
    layers = collections.defaultdict(lambda: {"ms": 0.0, "count": 0, "backend": set()})
    modules = dict(net.named_modules())
    for name, records in per_run.items():
        m = modules[name]
        _, xin, out, backend = records[0]
        sig = _signature(xin[1], out[1], out[2], out[3], m.stride[0])
        layers[sig]["ms"] += 1000 * statistics.median(r[0] for r in records)
        layers[sig]["count"] += 1
        layers[sig]["backend"].add(BACKEND_LABELS.get(backend, backend))
    return {"total_ms": 1000 * statistics.median(totals),
            "layers": {k: {**v, "backend": ", ".join(sorted(v["backend"]))} for k, v in layers.items()}}


def profile_openvino(onnx_path: str, batch: int, runs: int, threads: int, int8: bool = False) -> dict:
    import numpy as np
    import openvino as ov

    core = ov.Core()
    model = core.read_model(onnx_path)
    model.reshape({"images": [batch, 3, 300, 300]})            # static shapes: per-node shapes below
    settings = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": True}
    if int8:        # NNCF on the same calibration images as ours (bench_int8.py's)
        import nncf
        raw = _model()
        calib = [raw.preprocess([image])[0].numpy() for image in calibration_images()]
        calib = [np.repeat(c, batch, axis=0) for c in calib]
        model = nncf.quantize(model, nncf.Dataset(calib), subset_size=len(calib))
    else:
        settings["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = core.compile_model(model, "CPU", settings)
    shapes = {}
    for op in compiled.get_runtime_model().get_ops():
        if op.get_rt_info()["layerType"].astype(str) == "Convolution":
            xin, out = op.get_input_partial_shape(0), op.get_output_partial_shape(0)
            shapes[op.get_friendly_name()] = (xin.to_shape(), out.to_shape())
    request = compiled.create_infer_request()
    x = np.random.default_rng(0).standard_normal((batch, 3, 300, 300), dtype=np.float32)
    for _ in range(3):
        request.infer({"images": x})
    per_node, totals = collections.defaultdict(list), []
    for _ in range(runs):
        t0 = time.perf_counter()
        request.infer({"images": x})
        totals.append(time.perf_counter() - t0)
        for info in request.get_profiling_info():
            if info.node_name in shapes:
                per_node[info.node_name].append((info.real_time.total_seconds(), info.exec_type))
    layers = collections.defaultdict(lambda: {"ms": 0.0, "count": 0, "primitive": set()})
    for name, records in per_node.items():
        xin, out = shapes[name]
        stride = max(1, round(xin[2] / out[2]))
        sig = _signature(xin[1], out[1], out[2], out[3], stride)
        layers[sig]["ms"] += 1000 * statistics.median(r[0] for r in records)
        layers[sig]["count"] += 1
        layers[sig]["primitive"].add(records[0][1])
    return {"total_ms": 1000 * statistics.median(totals),
            "layers": {k: {**v, "primitive": ", ".join(sorted(v["primitive"]))} for k, v in layers.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--json")
    p.add_argument("--winograd", choices=("auto", "on", "off"), default="auto",
                   help="FastPredictor's winograd argument (auto: its default for this CPU)")
    p.add_argument("--int8", action="store_true",
                   help="profile the int8 networks: scratchdet.quantize against OpenVINO + NNCF")
    args = p.parse_args(argv)
    for flag, value in (("--batch", args.batch), ("--runs", args.runs), ("--top", args.top)):
        if value < 1:
            p.error(f"{flag} must be at least 1, got {value}")
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(_model(), os.path.join(tmp, "scratchdet300.onnx"))
        ov_prof = profile_openvino(onnx_path, args.batch, args.runs, threads, args.int8)
    ours = profile_ours(args.batch, args.runs, {"auto": None, "on": True, "off": False}[args.winograd], args.int8)
    print(f"B={args.batch}, {threads} threads; network total: ours {ours['total_ms']:.1f} ms, "
          f"OpenVINO {ov_prof['total_ms']:.1f} ms (per-layer sums: ours "
          f"{sum(v['ms'] for v in ours['layers'].values()):.1f}, OpenVINO "
          f"{sum(v['ms'] for v in ov_prof['layers'].values()):.1f} ms)")
    print("| conv (in->out @out HxW, stride) | n | ours ms | ours backend | OpenVINO ms | OpenVINO primitive | ours / OV |")
    print("|---|--:|--:|---|--:|---|--:|")
    ranked = sorted(ours["layers"].items(), key=lambda kv: -kv[1]["ms"])
    for sig, v in ranked[:args.top]:
        o = ov_prof["layers"].get(sig)
        ov_ms = f"{o['ms']:.2f}" if o else "–"
        ratio = f"{v['ms'] / o['ms']:.2f}" if o and o["ms"] > 0 else "–"
        print(f"| {sig} | {v['count']} | {v['ms']:.2f} | {v['backend']} | {ov_ms} | "
              f"{o['primitive'] if o else '(fused away)'} | {ratio} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"batch": args.batch, "threads": threads, "ours": ours, "openvino": ov_prof}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
