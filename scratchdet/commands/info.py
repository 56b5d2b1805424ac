"""`scratchdet info`: what was built, and a live call of each compiled op."""
import json
import platform


def register(sub):
    p = sub.add_parser("info", help="show build info (kernels, CUDA archs, versions) and run each op once",
                       description="Print what the scratchdet extension was built with and call its ops once "
                                   "on CPU (and CUDA when a GPU is visible) to prove they run.")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run)


def run(args):
    import torch

    import scratchdet

    info = scratchdet.ops.build_info()
    info["python"] = platform.python_version()
    info["machine"] = platform.processor() or platform.machine()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and info["cuda_kernels"] else [])
    live = {}
    for device in devices:
        a = torch.tensor([[0.0, 0.0, 2.0, 2.0]], device=device)
        b = torch.tensor([[1.0, 0.0, 3.0, 2.0]], device=device)
        live[f"box_iou[{device}]"] = round(float(scratchdet.ops.box_iou(a, b)), 6)  # expect 1/3
    info["live_calls"] = live
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")
    return 0
