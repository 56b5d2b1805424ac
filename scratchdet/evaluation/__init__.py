"""scratchdet.evaluation: VOC mAP (devkit semantics), COCO AP (pycocotools), small-object mAP, AP tables, PR plots."""
from .coco import COCO_METRICS, coco_eval, detections_to_coco
from .plots import plot_pr_curves
from .small import SMALL_SIDE, small_object_map
from .voc import average_precision, format_ap_table, voc_eval

__all__ = ["voc_eval", "average_precision", "format_ap_table", "coco_eval", "detections_to_coco",
           "COCO_METRICS", "plot_pr_curves", "small_object_map", "SMALL_SIDE"]
