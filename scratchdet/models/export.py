"""Export a detector.

Two kinds of file:

* the **whole detector** (:func:`export_detector_onnx`, :func:`export_detector_openvino`): one graph from
  ``images uint8 [B, 3, H, W]`` at the model's input size to fixed-shape detections
  (``num_detections [B]``, ``boxes [B, K, 4]``, ``scores [B, K]``, ``labels [B, K]``, K = keep_top_k);
  :mod:`scratchdet.runtime` runs it with ONNX Runtime or OpenVINO, without torch;
* the **raw network** (:func:`export_onnx`, :func:`export_program`): ``forward_raw(images) -> (loc, logits)``
  on normalised float images; post-processing is then the caller's (``scratchdet.ops.detect`` and the priors).

How the whole detector is built: the network (uint8 cast and normalisation in front) goes through
torch's dynamo ONNX exporter; the post-processing is written as an ONNX subgraph with ``onnx.helper``
and joined to it with ``onnx.compose.merge_models``. Writing the post-processing by hand keeps every
step's semantics in view (the thresholds' strictness, the tie rules, the padding) and leaves the
data-dependent NonMaxSuppression out of torch.export: ``torch.onnx.ops.symbolic`` can emit the op, but its
output shape must be given up front (tried with torch 2.14: a placeholder ``[5, 3]`` is written as the
output's shape and ONNX Runtime warns when 20 rows come back), and everything after it would be traced
with that made-up shape.

``half=True`` stores the weights in float16 (about half the file); the computation stays float32 in both
runtimes. The eager model's parameters and floating buffers (BatchNorm statistics; not the priors) are
rounded to float16 before export (:func:`round_weights_to_half`), and every constant that float16 then holds
exactly is stored as float16 followed by a cast to float32 (ONNX ``Cast``, OpenVINO ``Convert``): lossless,
so both runtimes are checked with the float32 tolerances against the eager model with the rounded weights.
(OpenVINO's ``compress_to_fp16`` is not used: it also rounds the priors and the BatchNorm scales OpenVINO
derives, which moves boxes by up to 5e-4 of the input side and flips detections at the keep_top_k
boundary.) How far the weight rounding moved the detections from the float32 model's is reported,
unchecked, as ``max_score_change_from_fp32`` (about 1e-4 for the demo model).

Semantics (``scratchdet.ops.reference.detect`` is the spec) and where they can differ:

* softmax over classes; boxes decoded against the priors (a constant of the graph) with the model's
  variances, op for op as ``reference.decode``, clipped to [0, 1], then scaled to the input's pixels;
* a prior whose logits or decoded box are not all finite gives no detection;
* per class: scores ``> score_threshold`` (compared in float32), the ``top_k`` best (ONNX TopK: equal
  scores go to the lower prior index, as in the reference's stable sort), then ONNX
  ``NonMaxSuppression`` among them, which suppresses a box whose IoU with a kept box is
  ``> nms_threshold`` (ONNX Runtime: IoU in float32 as ``inter / (area1 + area2 - inter)``, the
  reference's formula, compared with ``float32(nms_threshold)``; OpenVINO's NonMaxSuppression spec also
  removes a box whose IoU is "greater than" the threshold). Differences from the reference: (1) the
  reference compares the float32 IoU widened to float64 with the float64 threshold, so an IoU exactly
  equal to ``float32(nms_threshold)``, where that rounds *up*, is suppressed by the reference and kept
  here; (2) among exactly equal scores inside one class, ONNX Runtime visits boxes in its heap's order
  and OpenVINO's spec names no order, not the reference's lower prior index first, so of two
  overlapping boxes with tied scores a different one may be kept. The score filters differ too (ONNX
  Runtime keeps ``score > threshold``, OpenVINO's spec ``score >= threshold``), so the graph does the
  thresholding itself and gives non-candidates score ``-inf``, which both filters drop;
* across classes: the ``keep_top_k`` best by score, equal scores by lower prior index, then lower
  class (a TopK over the [prior, class] layout);
* padding past ``num_detections``: boxes 0, scores 0, labels 0 (``ops.detect`` pads labels with -1;
  here labels are 1-based class indices and 0 is padding).
"""
from __future__ import annotations

import copy
import json
import math
import os
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from .. import __version__, ops
from .ssd import DETECT_DEFAULTS, SSDRawOutputs, check_detect_settings

__all__ = ["DETECTOR_FORMAT", "ExportCheckError", "UInt8Normalise", "detector_settings", "detector_metadata",
           "detector_graph", "export_detector_onnx", "export_detector_openvino", "reference_detections",
           "check_detections", "check_images", "export_onnx", "export_program", "round_weights_to_half"]

DETECTOR_FORMAT = "scratchdet.detector.v1"   # metadata "format": the output layout described above
DETECTOR_INPUT = "images"
DETECTOR_OUTPUTS = ("num_detections", "boxes", "scores", "labels")
SCORE_TOLERANCE = 1e-5        # absolute, scores in [0, 1]
BOX_RTOL = 1e-4               # relative, boxes in input pixels ...
BOX_ATOL = 1e-3               # ... plus 1/1000 pixel for coordinates near 0 (float noise of a decoded box
                              # in [0, 1] is ~1e-7, times the input size ~1e-4 px)


class ExportCheckError(RuntimeError):
    """The exported detector's output differs from the eager model's: the file is not written."""


# --------------------------------------------------------------------------- float16 weights
def round_weights_to_half(model):
    """A copy of ``model`` whose parameters and floating buffers (BatchNorm statistics) are rounded to the
    nearest float16 and kept in float32: what a ``half=True`` export computes. The priors are not rounded
    (the post-processing graph keeps them in float32)."""
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for name, tensor in [*rounded.named_parameters(), *rounded.named_buffers()]:
            if tensor.is_floating_point() and name.split(".")[-1] != "priors":
                tensor.copy_(tensor.half().float())
    return rounded


def _store_initializers_as_half(graph) -> int:
    """Each float32 initializer of ``graph`` whose values float16 holds exactly -> a float16 initializer and a
    ``Cast`` to float32 under the old name (lossless). Returns how many were converted."""
    from onnx import TensorProto, helper, numpy_helper

    casts, converted = [], 0
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(init)
        with np.errstate(over="ignore"):        # a value beyond float16's range fails the test below
            halves = values.astype(np.float16)
        if values.size < 2 or not np.array_equal(halves.astype(np.float32), values, equal_nan=True):
            continue
        name = init.name
        init.CopyFrom(numpy_helper.from_array(halves, f"{name}.fp16"))
        casts.append(helper.make_node("Cast", [f"{name}.fp16"], [name], name=f"{name}.to_fp32",
                                      to=TensorProto.FLOAT))
        converted += 1
    for i, node in enumerate(casts):
        graph.node.insert(i, node)
    return converted


def _store_constants_as_half(ov_model) -> int:
    """The OpenVINO counterpart of :func:`_store_initializers_as_half`: each float32 Constant that float16
    holds exactly -> a float16 Constant and a Convert to float32 (lossless). Returns how many."""
    import openvino as ov
    import openvino.opset13 as ov_ops

    converted = 0
    for op in list(ov_model.get_ops()):
        if op.get_type_name() != "Constant" or op.get_output_element_type(0) != ov.Type.f32:
            continue
        values = op.get_data()
        with np.errstate(over="ignore"):
            halves = values.astype(np.float16)
        if values.size < 2 or not np.array_equal(halves.astype(np.float32), values, equal_nan=True):
            continue
        op.output(0).replace(ov_ops.convert(ov_ops.constant(halves), ov.Type.f32).output(0))
        converted += 1
    return converted


# --------------------------------------------------------------------------- the network part
def _normalise_constants(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset) with ``x * scale - offset == (x / 255 - mean) / std``, in float32 and computed as
    ``scratchdet.structures.image.normalise`` does, so the same uint8 pixels give the same floats."""
    mean32, std32 = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return (1.0 / (255.0 * std32)).astype(np.float32), (mean32 / std32).astype(np.float32)


class UInt8Normalise(nn.Module):
    """``images uint8 [B, 3, H, W] -> model.forward_raw((images / 255 - mean) / std)``: the network part of the
    whole-detector graph (mean/std from ``model.config``)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.training = model.training
        scale, offset = _normalise_constants(model.config["mean"], model.config["std"])
        device = model.priors.device
        self.register_buffer("scale", torch.from_numpy(scale).view(1, 3, 1, 1).to(device), persistent=False)
        self.register_buffer("offset", torch.from_numpy(offset).view(1, 3, 1, 1).to(device), persistent=False)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(torch.float32) * self.scale - self.offset

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_raw(self.normalise(images))


# --------------------------------------------------------------------------- settings and metadata
def detector_settings(model, **overrides) -> dict:
    """``model.detect_settings`` with the overrides that are not None; ValueError for invalid ones."""
    settings = {**model.detect_settings, **{k: v for k, v in overrides.items() if v is not None}}
    unknown = set(settings) - set(DETECT_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown detection settings {sorted(unknown)}; expected {sorted(DETECT_DEFAULTS)}")
    check_detect_settings(**settings)
    return {"score_threshold": float(settings["score_threshold"]), "nms_threshold": float(settings["nms_threshold"]),
            "top_k": int(settings["top_k"]), "keep_top_k": int(settings["keep_top_k"])}


def detector_metadata(model, settings: dict) -> dict[str, str]:
    """What a runtime needs beside the graph, as strings (ONNX metadata_props / OpenVINO rt_info):
    each value is JSON."""
    class_names = getattr(model, "class_names", None) or model.config.get("class_names")
    h, w = model.input_size
    meta = {
        "format": DETECTOR_FORMAT,
        "scratchdet_version": __version__,
        "input_size": [h, w],
        "input_dtype": "uint8",
        "mean": [float(v) for v in model.config["mean"]],
        "std": [float(v) for v in model.config["std"]],
        "resize": model.config.get("resize", "bilinear"),
        "num_classes": int(model.num_classes),
        "class_names": [str(c) for c in class_names] if class_names is not None else None,
        "variances": [float(v) for v in model.variances],
        "box_format": "x1y1x2y2, pixels of the network input",
        **settings,
    }
    return {k: json.dumps(v) for k, v in meta.items()}


# --------------------------------------------------------------------------- the post-processing graph
def detector_graph(priors: torch.Tensor, variances: Sequence[float], input_size: tuple[int, int], num_classes: int,
                   settings: dict, batch, opset_imports, ir_version: int):
    """The post-processing as an ONNX model: inputs ``loc [B, P, 4]``, ``logits [B, P, C]`` -> the four
    detector outputs (see the module docstring). ``batch``: an int or a symbolic dimension name."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    P, C = int(priors.shape[0]), int(num_classes)
    h, w = input_size
    k_class = min(settings["top_k"], P)
    k_all = min(settings["keep_top_k"], P * (C - 1))
    K = settings["keep_top_k"]
    nodes, inits = [], []

    def const(name: str, array) -> str:
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    f32 = np.float32
    pri = priors.detach().to("cpu", torch.float32).numpy()
    v0, v1 = (f32(v) for v in variances)
    thr = const("score_threshold", np.array([settings["score_threshold"]], f32))
    neg_inf = const("neg_inf", np.array(-np.inf, f32))
    const("zero_f", np.array(0, f32))
    const("zero_i", np.array(0, np.int64))

    # decode, op for op as reference.decode: cxcy = p_xy + loc_xy * v0 * p_wh; wh = p_wh * exp(loc_wh * v1)
    loc_xy = node("Slice", ["loc", const("s0", np.array([0])), const("s2", np.array([2])), const("ax2", np.array([2]))],
                  "loc_xy")
    loc_wh = node("Slice", ["loc", "s2", const("s4", np.array([4])), "ax2"], "loc_wh")
    d_xy = node("Mul", [node("Mul", [loc_xy, const("v0", v0)], "loc_xy_v0"), const("prior_wh", pri[:, 2:])], "d_xy")
    cxcy = node("Add", [const("prior_xy", pri[:, :2]), d_xy], "cxcy")
    wh = node("Mul", ["prior_wh", node("Exp", [node("Mul", [loc_wh, const("v1", v1)], "loc_wh_v1")], "exp_wh")], "wh")
    x1y1 = node("Sub", [cxcy, node("Div", [wh, const("two", f32(2))], "half_wh")], "x1y1")
    boxes = node("Concat", [x1y1, node("Add", [x1y1, wh], "x2y2")], "boxes_raw", axis=-1)
    boxes = node("Clip", [boxes, "zero_f", const("one_f", f32(1))], "boxes_unit")          # [B, P, 4]

    # a prior whose logits or box are not all finite gives nothing
    def nonfinite(x: str) -> str:
        bad = node("Or", [node("IsNaN", [x], f"{x}_nan"), node("IsInf", [x], f"{x}_inf")], f"{x}_bad")
        return node("ReduceMax", [node("Cast", [bad], f"{x}_badf", to=TensorProto.FLOAT), "ax2"], f"{x}_anybad",
                    keepdims=1)
    finite = node("Equal", [node("Add", [nonfinite("logits"), nonfinite(boxes)], "bad_sum"), "zero_f"], "finite")

    # per class: score > threshold, the top_k best, then NMS among them
    probs = node("Softmax", ["logits"], "probs", axis=-1)
    fg = node("Slice", [probs, const("one_i", np.array([1])), const("c_end", np.array([C])), "ax2"], "probs_fg")
    cand = node("And", [node("Greater", [fg, thr], "above"), finite], "candidate")
    masked = node("Transpose", [node("Where", [cand, fg, neg_inf], "masked_pc")], "masked", perm=[0, 2, 1])
    top_vals = node("TopK", [masked, const("k_class", np.array([k_class], np.int64))], "top_vals", axis=-1,
                    largest=1, sorted=1)
    nodes[-1].output.append("top_idx")
    full_neg = node("Expand", [neg_inf, node("Shape", [masked], "masked_shape")], "full_neg")
    nms_scores = node("ScatterElements", [full_neg, "top_idx", top_vals],
                      "nms_scores", axis=2)                                                   # [B, C-1, P]
    selected = node("NonMaxSuppression", [boxes, nms_scores, const("max_out", np.array([k_class], np.int64)),
                                          const("iou", np.array([settings["nms_threshold"]], f32)), thr],
                    "selected", center_point_box=0)                                            # [N, 3] (b, c-1, p)
    sel_scores = node("GatherND", [nms_scores, selected], "sel_scores")

    # across classes: keep_top_k best over the [prior, class] layout (ties: lower prior, then lower class)
    sel_bpc = node("Gather", [selected, const("bpc", np.array([0, 2, 1], np.int64))], "sel_bpc", axis=1)
    dense_shape = node("Shape", [fg], "fg_shape")                                               # [B, P, C-1]
    dense = node("ScatterND", [node("Expand", [neg_inf, dense_shape], "dense_neg"), sel_bpc, sel_scores], "dense")
    flat = node("Reshape", [dense, const("flat_shape", np.array([0, -1], np.int64))], "flat")
    best = node("TopK", [flat, const("k_all", np.array([k_all], np.int64))], "best", axis=1, largest=1, sorted=1)
    nodes[-1].output.append("best_idx")
    valid = node("Greater", [best, thr], "valid")
    n_fg = const("n_fg", np.array(C - 1, np.int64))
    prior_idx = node("Div", ["best_idx", n_fg], "prior_idx")
    label = node("Add", [node("Mod", ["best_idx", n_fg], "class0"), const("one_l", np.array(1, np.int64))], "label")
    box_px = node("Mul", [node("GatherND", [boxes, node("Unsqueeze", [prior_idx, const("ax_last", np.array([-1]))],
                                                       "prior_idx_u")], "best_boxes", batch_dims=1),
                          const("px_scale", np.array([w, h, w, h], f32))], "best_boxes_px")
    out_boxes = node("Where", [node("Unsqueeze", [valid, "ax_last"], "valid_u"), box_px, "zero_f"], "boxes_k")
    out_scores = node("Where", [valid, best, "zero_f"], "scores_k")
    out_labels = node("Where", [valid, label, "zero_i"], "labels_k")
    node("ReduceSum", [node("Cast", [valid], "valid_i", to=TensorProto.INT64), const("ax1", np.array([1]))],
         "num_detections", keepdims=0)
    pad = K - k_all                            # fewer (prior, class) pairs than keep_top_k: pad to K
    for src, dst, rank in ((out_boxes, "boxes", 3), (out_scores, "scores", 2), (out_labels, "labels", 2)):
        if pad:
            pads = [0] * (2 * rank)
            pads[rank + 1] = pad
            node("Pad", [src, const(f"pad_{dst}", np.array(pads, np.int64))], dst)
        else:
            node("Identity", [src], dst)

    B = batch
    graph = helper.make_graph(
        nodes, "scratchdet_detect",
        [helper.make_tensor_value_info("loc", TensorProto.FLOAT, [B, P, 4]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, [B, P, C])],
        [helper.make_tensor_value_info("num_detections", TensorProto.INT64, [B]),
         helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [B, K, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [B, K]),
         helper.make_tensor_value_info("labels", TensorProto.INT64, [B, K])],
        inits)
    model = helper.make_model(graph, opset_imports=list(opset_imports), ir_version=ir_version)
    onnx.checker.check_model(model)
    return model


# --------------------------------------------------------------------------- reference and check
def check_images(count: int = 4, size: tuple[int, int] = (128, 128), seed: int = 0) -> np.ndarray:
    """Deterministic uint8 test images ``[count, 3, H, W]``: a few rectangles of colour over noise, with noise
    on them too. No region is flat, so no two priors see the same pixels and scores do not tie exactly
    (exact ties are where runtimes may legitimately order detections differently)."""
    rng = np.random.default_rng(seed)
    h, w = size
    images = rng.uniform(0, 255, (count, 3, h, w))
    for im in images:
        for _ in range(4):
            y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
            y1, x1 = y0 + rng.integers(h // 8, h // 2), x0 + rng.integers(w // 8, w // 2)
            im[:, y0:y1, x0:x1] = 0.75 * rng.uniform(0, 255, (3, 1, 1)) + 0.25 * im[:, y0:y1, x0:x1]
    return np.round(images).astype(np.uint8)


@torch.inference_mode()
def reference_detections(model, images: np.ndarray, settings: dict) -> list[dict]:
    """The eager detections on uint8 ``images [B, 3, H, W]`` at the input size: ``ops.detect`` on
    ``model.forward_raw`` of the normalised pixels, boxes in input pixels. Per image a dict of numpy
    ``boxes [n, 4]``, ``scores [n]``, ``labels [n]``."""
    model = model.eval()
    device = model.priors.device
    net = UInt8Normalise(model)
    loc, logits = net(torch.from_numpy(np.ascontiguousarray(images)).to(device))
    boxes, scores, labels, num = ops.detect(loc, logits, model.priors, model.variances, clip=True, **settings)
    h, w = model.input_size
    boxes = boxes.float() * torch.tensor([w, h, w, h], dtype=torch.float32, device=boxes.device)
    return [{"boxes": boxes[i, :n].cpu().numpy(), "scores": scores[i, :n].float().cpu().numpy(),
             "labels": labels[i, :n].cpu().numpy()} for i, n in enumerate(num.tolist())]


def _unpad(outputs: dict) -> list[dict]:
    return [{"boxes": outputs["boxes"][i, :n], "scores": outputs["scores"][i, :n], "labels": outputs["labels"][i, :n]}
            for i, n in enumerate(np.asarray(outputs["num_detections"]).tolist())]


def check_detections(expected: list[dict], got: list[dict], runtime: str) -> dict:
    """Compare the exported detector's detections with the eager ones; ExportCheckError naming the worst.

    Per image: the same count; each eager detection matched to one exported detection with the same
    label, score within SCORE_TOLERANCE and every box coordinate within BOX_RTOL relative + BOX_ATOL
    pixels (a match rather than a row-by-row compare, so that two scores closer than float noise may
    swap places). Returns {images, detections, max_score_error, max_box_error}.
    """
    worst = {"images": len(expected), "detections": 0, "max_score_error": 0.0, "max_box_error": 0.0}
    for i, (e, g) in enumerate(zip(expected, got)):
        if len(e["scores"]) != len(g["scores"]):
            raise ExportCheckError(f"{runtime}: image {i} has {len(g['scores'])} detections, the eager model "
                                   f"{len(e['scores'])}; {_first_unmatched(e, g)}")
        used = np.zeros(len(g["scores"]), bool)
        for j in range(len(e["scores"])):
            score_err = np.abs(g["scores"].astype(np.float64) - float(e["scores"][j]))
            box_err = np.abs(g["boxes"].astype(np.float64) - e["boxes"][j].astype(np.float64))
            box_excess = (box_err - (BOX_RTOL * np.abs(e["boxes"][j]) + BOX_ATOL)).max(axis=1)
            ok = (~used) & (g["labels"] == e["labels"][j]) & (score_err <= SCORE_TOLERANCE) & (box_excess <= 0)
            if not ok.any():
                raise ExportCheckError(f"{runtime}: image {i}, detection {j} of the eager model "
                                       f"({_describe(e, j)}) has no match in the export; nearest: "
                                       f"{_nearest(e, g, j)}")
            k = int(np.flatnonzero(ok)[np.argmin(score_err[ok])])
            used[k] = True
            worst["detections"] += 1
            worst["max_score_error"] = max(worst["max_score_error"], float(score_err[k]))
            worst["max_box_error"] = max(worst["max_box_error"], float(box_err[k].max()))
    return worst


def _describe(d: dict, j: int) -> str:
    box = ", ".join(f"{v:.4f}" for v in d["boxes"][j])
    return f"label {int(d['labels'][j])}, score {float(d['scores'][j]):.6f}, box [{box}]"


def _nearest(e: dict, g: dict, j: int) -> str:
    if len(g["scores"]) == 0:
        return "none (no detections)"
    err = np.abs(g["scores"] - e["scores"][j]) + np.abs(g["boxes"] - e["boxes"][j]).max(axis=1)
    k = int(np.argmin(err))
    return _describe(g, k)


def _first_unmatched(e: dict, g: dict) -> str:
    longer, other, name = (e, g, "eager") if len(e["scores"]) > len(g["scores"]) else (g, e, "exported")
    for j in range(len(longer["scores"])):
        same = (other["labels"] == longer["labels"][j]) & (np.abs(other["scores"] - longer["scores"][j])
                                                           <= SCORE_TOLERANCE)
        if not same.any():
            return f"first unmatched {name} detection #{j}: {_describe(longer, j)}"
    return "every detection of one side has a near twin (a tie at a threshold?)"


def _run_checked(run: Callable[[np.ndarray], dict], model, settings: dict, runtime: str, batch_size: int | None,
                 images: np.ndarray | None) -> dict:
    """Run ``run`` (uint8 batch -> output dict) on the check images in chunks of the graph's batch size."""
    if images is None:
        count = 4 if batch_size is None else batch_size * math.ceil(4 / batch_size)
        images = check_images(count, model.input_size)
    chunk = batch_size or len(images)
    if len(images) % chunk:
        raise ValueError(f"{len(images)} check images do not split into batches of {chunk} (a fixed-batch export)")
    got = []
    for start in range(0, len(images), chunk):
        got += _unpad(run(images[start:start + chunk]))
    return check_detections(reference_detections(model, images, settings), got, runtime)


def _change_from_fp32(run: Callable[[np.ndarray], dict], model, settings: dict, batch_size: int | None) -> dict:
    """How far a float16-weight export's detections are from the float32 model's, reported, not checked:
    the largest score change among detections matched by label and best overlap, and how many images
    changed their detection count."""
    count = 4 if batch_size is None else batch_size * math.ceil(4 / batch_size)
    images = check_images(count, model.input_size, seed=1)
    chunk = batch_size or len(images)
    got = []
    for start in range(0, len(images), chunk):
        got += _unpad(run(images[start:start + chunk]))
    worst, changed = 0.0, 0
    for e, g in zip(reference_detections(model, images, settings), got):
        changed += int(len(e["scores"]) != len(g["scores"]))
        for j in range(len(e["scores"])):
            same = g["labels"] == e["labels"][j]
            if same.any():
                err = np.abs(g["boxes"][same] - e["boxes"][j]).max(axis=1)
                worst = max(worst, float(abs(g["scores"][same][np.argmin(err)] - e["scores"][j])))
    return {"max_score_change_from_fp32": worst, "images_with_another_count_than_fp32": changed}


def _ort_runner(path: str) -> Callable[[np.ndarray], dict]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return lambda x: dict(zip(DETECTOR_OUTPUTS, session.run(list(DETECTOR_OUTPUTS), {DETECTOR_INPUT: x})))


def _openvino_runner(path: str) -> Callable[[np.ndarray], dict]:
    import openvino as ov

    compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    def run(x):
        result = compiled(x)
        return {name: result[compiled.output(name)] for name in DETECTOR_OUTPUTS}
    return run


# --------------------------------------------------------------------------- the whole detector
def _example_uint8(model, batch_size: int) -> torch.Tensor:
    return torch.zeros(batch_size, 3, *model.input_size, dtype=torch.uint8, device=model.priors.device)


def _temp_path(path: str, suffix: str) -> str:
    """A name beside ``path`` for writing before the check (renamed over ``path`` after it)."""
    return f"{os.path.splitext(path)[0]}.tmp{os.getpid()}{suffix}"


def export_detector_onnx(model, path: str, *, dynamic: bool = True, batch_size: int = 1, opset: int = 18,
                         images: np.ndarray | None = None, score_threshold: float | None = None,
                         nms_threshold: float | None = None, top_k: int | None = None,
                         keep_top_k: int | None = None, half: bool = False) -> dict:
    """Write the whole detector as ONNX to ``path``, after checking it in ONNX Runtime.

    Input ``images``: uint8 ``[B, 3, H, W]`` RGB at the model's input size (``model.input_size``), B dynamic
    with ``dynamic`` else ``batch_size``. uint8 because that is what cameras and image decoders give (no
    float copy to make), it is 4x less input traffic than float32, and there is no doubt about the range
    (0..255 vs 0..1 vs normalised): the graph casts and normalises with the model's own mean and std
    (``model.input_spec``), ``(x / 255 - mean) / std``. Resizing to the input size stays outside (the
    runtime loader, :mod:`scratchdet.runtime`, does it with the package's filter).

    Outputs (K = keep_top_k): ``num_detections [B]`` int64, ``boxes [B, K, 4]`` float32 (x1, y1, x2, y2 in
    pixels of the network input), ``scores [B, K]`` float32, ``labels [B, K]`` int64 (1-based class, 0 =
    padding); rows best first, zero past num_detections. Thresholds default to ``model.detect_settings``.
    ``metadata_props`` hold the input spec, thresholds, variances, class names and version (JSON values).

    The graph is written to a temporary name, run in ONNX Runtime on ``images`` (default: a few
    :func:`check_images`) and compared with :func:`reference_detections`; ExportCheckError on a mismatch
    (nothing written). Returns the check's summary with ``path`` added.

    ``half``: float16 weights, float32 computation, checked against the rounded weights (module docstring).
    """
    import onnx
    import onnx.compose

    if opset < 18:
        raise ValueError(f"the detector graph needs ONNX opset >= 18 (ReduceMax with axes as an input), got {opset}")
    settings = detector_settings(model, score_threshold=score_threshold, nms_threshold=nms_threshold, top_k=top_k,
                                 keep_top_k=keep_top_k)
    model = model.eval()
    full_precision = model
    if half:
        model = round_weights_to_half(model)
    path = os.fspath(path)
    net_module = UInt8Normalise(model)
    if dynamic:
        batch = torch.export.Dim("batch", min=1, max=1024)
        program = torch.onnx.export(net_module, (_example_uint8(model, 2),), dynamo=True, input_names=[DETECTOR_INPUT],
                                    output_names=["loc", "logits"], opset_version=opset, dynamic_shapes=({0: batch},),
                                    verbose=False, optimize=not half)
    else:
        program = torch.onnx.export(net_module, (_example_uint8(model, batch_size),), dynamo=True,
                                    input_names=[DETECTOR_INPUT], output_names=["loc", "logits"], opset_version=opset,
                                    verbose=False, optimize=not half)
    net = program.model_proto
    # half: the exporter's optimiser is off, since it folds BatchNorm into the convs and the folded weights are
    # no longer the rounded ones (ONNX Runtime and OpenVINO fold it when they load the graph, in float32)
    if half:
        _store_initializers_as_half(net.graph)
    for n in net.graph.node:            # the exporter's per-node debug records (stack traces, source names): a
        del n.metadata_props[:]         # third of a small model's file without the optimiser
        n.doc_string = ""
    batch_dim = net.graph.input[0].type.tensor_type.shape.dim[0]
    batch_name = batch_dim.dim_param if batch_dim.dim_param else batch_dim.dim_value
    post = detector_graph(model.priors, model.variances, model.input_size, model.num_classes, settings, batch_name,
                          net.opset_import, net.ir_version)
    full = onnx.compose.merge_models(net, post, io_map=[("loc", "loc"), ("logits", "logits")], prefix2="detect/")
    # merge_models prefixes the second graph's outputs; give them their public names back
    for out in full.graph.output:
        old = out.name
        new = old[len("detect/"):]
        out.name = new
        for n in full.graph.node:
            n.output[:] = [new if o == old else o for o in n.output]
    full.graph.name = "scratchdet_detector"
    metadata = detector_metadata(model, settings)
    metadata["weights_dtype"] = json.dumps("float16" if half else "float32")
    onnx.helper.set_model_props(full, metadata)
    tmp = _temp_path(path, ".onnx")
    try:
        onnx.save(full, tmp)
        run = _ort_runner(tmp)
        summary = _run_checked(run, model, settings, "onnxruntime", None if dynamic else batch_size, images)
        if half:
            summary.update(_change_from_fp32(run, full_precision, settings, None if dynamic else batch_size))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return {"path": path, **summary, **settings}


def read_onnx_metadata(path: str) -> dict:
    """The detector's metadata_props, JSON-decoded."""
    import onnx

    return {p.key: json.loads(p.value) for p in onnx.load(path, load_external_data=False).metadata_props}


def export_detector_openvino(model, onnx_path: str, xml_path: str, *, images: np.ndarray | None = None) -> dict:
    """OpenVINO IR (``.xml`` + ``.bin``) of a whole-detector ONNX file written by
    :func:`export_detector_onnx`, its metadata as rt_info ``scratchdet/<key>``; checked in OpenVINO
    (f32 inference precision) against the eager model before it is renamed into place.

    For an ONNX file exported with ``half=True``, the IR stores the same float16 weights: OpenVINO folds the
    ONNX file's float16->float32 casts into float32 constants when it converts, so each float32 constant
    that float16 holds exactly becomes a float16 constant and a ``Convert`` again (lossless;
    ``compress_to_fp16`` is not used, since it would round every constant, the priors and the BatchNorm
    scales OpenVINO derives included). The check is against :func:`round_weights_to_half` of ``model``,
    with the float32 tolerances."""
    import openvino as ov

    meta = read_onnx_metadata(onnx_path)
    if meta.get("format") != DETECTOR_FORMAT:
        raise ValueError(f"{onnx_path} is not a scratchdet detector export (metadata format {meta.get('format')!r})")
    settings = {k: meta[k] for k in DETECT_DEFAULTS}
    half = meta.get("weights_dtype") == "float16"
    full_precision = model.eval()
    if half:
        model = round_weights_to_half(full_precision)
    ov_model = ov.convert_model(os.fspath(onnx_path))
    for key, value in meta.items():
        ov_model.set_rt_info(json.dumps(value), ["scratchdet", key])
    xml_path = os.fspath(xml_path)
    bin_path = os.path.splitext(xml_path)[0] + ".bin"
    tmp = _temp_path(xml_path, ".xml")
    tmp_bin = os.path.splitext(tmp)[0] + ".bin"
    batch = ov_model.input(0).get_partial_shape()[0]
    try:
        if half:
            _store_constants_as_half(ov_model)
        ov.save_model(ov_model, tmp, compress_to_fp16=False)
        run = _openvino_runner(tmp)
        fixed = None if batch.is_dynamic else batch.get_length()
        summary = _run_checked(run, model, settings, "openvino", fixed, images)
        if half:
            summary.update(_change_from_fp32(run, full_precision, settings, fixed))
        os.replace(tmp_bin, bin_path)
        os.replace(tmp, xml_path)
    finally:
        for p in (tmp, tmp_bin):
            if os.path.exists(p):
                os.remove(p)
    return {"path": xml_path, **summary}


# --------------------------------------------------------------------------- the raw network
def _example(model, batch_size: int) -> torch.Tensor:
    device = model.priors.device
    return torch.zeros(batch_size, 3, *model.input_size, device=device)


def export_program(model, path: str, batch_size: int = 1) -> str:
    """A torch.export program (.pt2) of the raw network with a dynamic batch dimension."""
    model = model.eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(SSDRawOutputs(model), (_example(model, max(batch_size, 2)),),
                                  dynamic_shapes=({0: batch},))
    torch.export.save(program, os.fspath(path))
    return os.fspath(path)


def export_onnx(model, path: str, batch_size: int = 1, opset: int = 18) -> str:
    """The raw network as ONNX (dynamo exporter): input 'images' (normalised float), outputs 'loc', 'logits';
    dynamic batch. Post-processing is the caller's (``scratchdet.ops.detect`` with the priors)."""
    model = model.eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(SSDRawOutputs(model), (_example(model, max(batch_size, 2)),), dynamo=True,
                                input_names=["images"], output_names=["loc", "logits"], opset_version=opset,
                                dynamic_shapes=({0: batch},))
    program.save(os.fspath(path))
    return os.fspath(path)
