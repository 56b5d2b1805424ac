"""`scratchdet info`: what was built, and a live call of each compiled op."""
import json
import platform

import torch

from .. import ops


def register(sub):
    p = sub.add_parser("info", help="show build info (kernels, CUDA archs, versions) and run each op once",
                       description="Print what the scratchdet extension was built with and call its ops once "
                                   "on CPU (and CUDA when a GPU is visible) to prove they run.")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run)


def run(args):
    info = ops.build_info()
    info["python"] = platform.python_version()
    info["machine"] = platform.processor() or platform.machine()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and info["cuda_kernels"] else [])
    live = {}
    for device in devices:
        live.update(_live_calls(torch, ops, device))
    info["live_calls"] = live
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")
    return 0


def _live_calls(torch, ops, device):
    """Call each op once on a tiny known input; the values are easy to check by eye."""
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]], device=device)
    b = torch.tensor([[1.0, 0.0, 3.0, 2.0]], device=device)
    out = {f"box_iou[{device}]": round(float(ops.box_iou(a, b)), 6)}                      # 1/3
    priors = torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5]], device=device)
    gt = torch.tensor([[[0.0, 0.0, 0.5, 0.5]]], device=device)
    _, conf, iou = ops.match_priors(priors, gt, torch.tensor([[3]], device=device))
    out[f"match_priors[{device}]"] = {"conf": conf[0].tolist(), "iou": [round(float(x), 4) for x in iou[0]]}
    logits = torch.tensor([[[0.0, 4.0], [4.0, 0.0]]], device=device)
    boxes, scores, labels, num = ops.detect(torch.zeros(1, 2, 4, device=device), logits, priors, keep_top_k=5)
    out[f"detect[{device}]"] = {"num": int(num[0]), "label": int(labels[0, 0]), "score": round(float(scores[0, 0]), 4)}
    keep = ops.batched_nms(torch.cat([a, a + 0.1, b]), torch.tensor([0.9, 0.8, 0.7], device=device),
                           torch.tensor([0, 0, 1], device=device), 0.5)
    out[f"batched_nms[{device}]"] = keep.tolist()                                          # [0, 2]
    x = torch.ones(1, 1, 3, 3, device=device)
    y = ops.conv_bn_act(x, torch.ones(1, 1, 1, 1, device=device), torch.tensor([-2.0], device=device), None,
                        [1, 1], [0, 0], [1, 1], 1, True)
    out[f"conv_bn_act[{device}]"] = float(y.sum())                                        # relu(1 - 2) = 0
    return out
