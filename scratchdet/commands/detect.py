"""`scratchdet detect`: run saved weights on image files and write pictures with labelled boxes."""
from __future__ import annotations

import glob
import json
import os

from torchvision.transforms.functional import to_pil_image

from ..engine.visualize import draw_detections
from ..models.fast_inference import FastPredictor
from ..structures.image import read_image
from ._common import CLIError, load_model, pick_device, threshold, writable_dir

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def register(sub):
    p = sub.add_parser("detect", help="detect objects in images and draw labelled boxes",
                       description="Run a saved detector on image files (or folders of images) and write each "
                                   "with its labelled boxes to --out, plus detections.json.")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--weights", required=True, help="a model saved by scratchdet")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--score-threshold", type=threshold, default=0.3,
                   help="draw boxes scoring at least this, in [0, 1] (0.3)")
    p.add_argument("--device", default="auto")
    p.add_argument("--fast", action="store_true", help="use the fused inference path (scratchdet.fuse)")
    p.set_defaults(func=run)


def _collect(paths):
    files = []
    for path in paths:
        if os.path.isdir(path):
            files += sorted(p for p in glob.glob(os.path.join(path, "*")) if p.lower().endswith(IMAGE_EXTS))
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise CLIError(f"image not found: {path}")
    if not files:
        raise CLIError(f"no images found in {paths}")
    return files


def run(args):
    files = _collect(args.images)
    out = writable_dir(args.out)
    model = load_model(args.weights, pick_device(args.device))
    names = getattr(model, "class_names", None) or [str(i) for i in range(1, model.num_classes)]
    predictor = model
    if args.fast:
        predictor = FastPredictor(model)  # BN folded, conv+residual+ReLU fused, channels_last
    results = {}
    for path in files:
        image = read_image(path)   # BadImageError (a UserError) names the file
        pred = predictor.predict([image])[0]
        drawn = draw_detections(image, pred["boxes"], pred["labels"], pred["scores"], names, args.score_threshold)
        target = os.path.join(out, os.path.splitext(os.path.basename(path))[0] + "_det.png")
        to_pil_image(drawn).save(target)
        keep = pred["scores"] >= args.score_threshold
        results[path] = [{"label": names[int(l) - 1], "score": round(float(s), 4), "box": [round(float(v), 1) for v in b]}
                         for b, s, l in zip(pred["boxes"][keep], pred["scores"][keep], pred["labels"][keep])]
        print(f"{path}: {int(keep.sum())} detections -> {target}")
    with open(os.path.join(out, "detections.json"), "w") as f:
        json.dump(results, f, indent=2)
    return 0
