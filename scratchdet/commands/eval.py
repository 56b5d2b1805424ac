"""`scratchdet eval`: score saved weights on a VOC split (VOC07 / area mAP) or a COCO json (COCO AP)."""
from __future__ import annotations

import json
import os

from ..data import BadImageError, COCODataset, SSDTransform, VOCDataset, YOLODataset
from ..evaluation.evaluate import evaluate_model
from ..evaluation import format_ap_table, plot_pr_curves
from ._common import CLIError, existing_dir, existing_file, last_line, pick_device, threshold, writable_dir
from .quantize import load_any


def register(sub):
    p = sub.add_parser("eval", help="evaluate saved weights (VOC mAP or COCO AP)",
                       description="Run a saved detector over a data set and print the per-class AP table. "
                                   "VOC: --data ROOT --split test. YOLO: --data data.yaml --split val. "
                                   "COCO: --coco-images DIR --coco-json FILE.")
    p.add_argument("--weights", required=True, help="a model saved by scratchdet (best_model.pt, model_final.pt)")
    p.add_argument("--data", help="a VOC-layout folder or a YOLO data.yaml")
    p.add_argument("--split", default="val", help="split to evaluate (default: val)")
    p.add_argument("--coco-images", help="COCO image folder")
    p.add_argument("--coco-json", help="COCO instances json (enables COCO AP through pycocotools)")
    p.add_argument("--metric", choices=["voc07", "voc"], default="voc07",
                   help="VOC metric: voc07 = 11-point (default), voc = area under the PR curve")
    p.add_argument("--score-threshold", type=threshold, default=None,
                   help="keep detections scoring at least this, in [0, 1] (default: the model's, 0.01 unless set)")
    p.add_argument("--nms-threshold", type=threshold, default=None,
                   help="NMS IoU threshold, in [0, 1] (default: the model's, 0.45 unless set)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="folder for results.json, detections.json (every detection, pixel boxes) "
                                 "and the precision-recall plot")
    p.set_defaults(func=run)


def run(args):
    device = pick_device(args.device)
    if not args.data and not args.coco_json:
        raise CLIError("give --data (VOC layout) or --coco-images/--coco-json")
    model = load_any(args.weights, device)   # fp32 weights, or an int8 file from scratchdet quantize (CPU)
    if not hasattr(model, "parameters"):
        device = "cpu"
    # the detection settings predict uses by default (checked: ConfigError names a bad one)
    model.set_detect_settings(**{key: getattr(args, key) for key in ("score_threshold", "nms_threshold")
                                 if getattr(args, key) is not None})
    tf = SSDTransform.from_config(model.config, train=False)   # the pixels model.predict sees
    names = getattr(model, "class_names", None)   # so label i means the class the model was trained on
    try:
        if args.coco_json:
            existing_file(args.coco_json, "COCO annotation json")
            existing_dir(args.coco_images or "", "COCO image folder")
            dataset = COCODataset(args.coco_images, args.coco_json, transform=tf, classes=names)
        elif args.data.lower().endswith((".yaml", ".yml")):
            existing_file(args.data, "YOLO data file")
            dataset = YOLODataset(args.data, split=args.split, transform=tf)
        else:
            existing_dir(args.data, "data folder")
            dataset = VOCDataset(args.data, split=args.split, classes=names, transform=tf)
    except (ValueError, FileNotFoundError) as exc:
        raise CLIError(str(exc)) from None
    if names is not None and list(dataset.classes) != list(names):
        raise CLIError(f"the data's classes {list(dataset.classes)} are not the model's {list(names)}")
    out = writable_dir(args.out) if args.out else None
    try:
        result = evaluate_model(model, dataset, args.batch_size, device, use_07_metric=args.metric == "voc07",
                                return_curves=True)
    except BadImageError as exc:
        raise CLIError(last_line(str(exc))) from None
    print(format_ap_table(result, dataset.classes))
    summary = {"metric": args.metric, "map": result["map"],
               "ap": {dataset.classes[int(k) - 1]: v for k, v in result["ap"].items()}}
    if "coco" in result:
        summary["coco"] = result["coco"]
        print(json.dumps(summary["coco"], indent=2))
    if out:
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(summary, f, indent=2)
        with open(os.path.join(out, "detections.json"), "w") as f:
            json.dump([{"image_id": ann["image_id"], "boxes": det["boxes"].tolist(), "scores": det["scores"].tolist(),
                        "labels": det["labels"].tolist()}
                       for det, ann in zip(result["detections"], result["annotations"])], f)
        plot_pr_curves(result, os.path.join(out, "pr_curves.png"), class_names=dataset.classes)
        print(f"wrote {out}/results.json, {out}/detections.json and {out}/pr_curves.png")
    return 0
