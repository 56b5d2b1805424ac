"""What the grid runners share (``scratchdet ablate``, ``scratchdet compare``): the output folder with
one sub-folder per run under ``runs/``, each run's ``result.json`` written last and atomically (so a
killed grid loses at most the run in progress, and ``--resume`` skips the finished ones), and the
evaluation of a trained run: VOC07 mAP, AP per class, mAP on small objects and COCO AP_S.
"""
from __future__ import annotations

import json
import os

from ..evaluation import coco_eval, detections_to_coco, small_object_map
from ..evaluation.evaluate import evaluate_model, pixel_inclusive
from ..structures.files import make_writable_dir
from ..structures.image import read_image_size

__all__ = ["prepare_out_dir", "read_result", "detection_metrics"]


def prepare_out_dir(out: str, resume: bool, what: str, error: type[Exception]) -> None:
    """Create ``out``; refuse (``error``) one that is not writable, or one that already holds runs
    when not resuming."""
    try:
        make_writable_dir(out)
    except OSError as exc:
        raise error(f"output folder {out!r} is not writable ({exc.strerror})") from None
    runs = os.path.join(out, "runs")
    if not resume and os.path.isdir(runs) and os.listdir(runs):
        raise error(f"{out} already holds {what} runs: pass --resume to continue them, or choose another --out")


def read_result(path: str) -> dict | None:
    """A finished run's result.json, or None when the run has not finished."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def detection_metrics(model, val_set, data_root: str, batch_size: int, workers: int, small: bool = True) -> dict:
    """``map`` (VOC07) and ``ap`` per class name of ``model`` on ``val_set``; with ``small``, also
    ``map_small`` / ``num_small`` (objects under 32 px at the network input) and, when the data set
    has a COCO json beside it (the synthetic set does), ``coco`` and ``coco_ap_small``."""
    r = evaluate_model(model, val_set, batch_size=batch_size, device=model.priors.device, workers=workers)
    out = {"map": r["map"], "ap": {val_set.classes[int(k) - 1]: v for k, v in r["ap"].items()}}
    if not small:
        return out
    records = getattr(val_set, "records", None) or []
    sizes = [(rec.width, rec.height) for rec in records]
    if any(w is None for w, _ in sizes):
        sizes = [read_image_size(rec.image_path) for rec in records]
    result = small_object_map(r["detections"], r["annotations"], sizes, model.input_size,
                              pixel_inclusive=pixel_inclusive(val_set)) if records else None
    out["map_small"] = None if result is None else result["map"]
    out["num_small"] = 0 if result is None else result["num_small"]
    out["coco_ap_small"] = None
    split = getattr(val_set, "split", None)
    coco_json = os.path.join(data_root, "annotations", f"instances_{split}.json")
    if records and os.path.isfile(coco_json):       # the synthetic set writes one beside its VOC files
        with open(coco_json, encoding="utf-8") as f:
            ids = {os.path.basename(im["file_name"]): im["id"] for im in json.load(f)["images"]}
        image_ids = [ids.get(os.path.basename(rec.image_path)) for rec in records]
        if None not in image_ids:
            stats = coco_eval(coco_json, detections_to_coco(r["detections"], image_ids), image_ids=image_ids)
            out["coco"] = stats
            out["coco_ap_small"] = stats["APs"] if stats["APs"] >= 0 else None   # -1: no small objects
    return out
