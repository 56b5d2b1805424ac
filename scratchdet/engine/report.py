"""The ablation report: a table laid out like the paper's, next to the paper's numbers, and the
overlaid Figure-1 curves of each learning rate."""
from __future__ import annotations

import os
import statistics

from .training_log import read_jsonl
from .visualize import plot_figure1

__all__ = ["ablation_table", "plot_ablation_figures", "format_cell", "PAPER_BN_LR", "PAPER_STEM"]

# The paper's VOC07-test mAP (%), None = NAN (did not converge)
PAPER_BN_LR = {
    ("none", 0.001): 67.6, ("none", 0.01): None, ("none", 0.05): None,
    ("head", 0.001): 71.0, ("head", 0.01): 75.6, ("head", 0.05): None,
    ("backbone", 0.001): 72.8, ("backbone", 0.01): 77.8, ("backbone", 0.05): 78.0,
    ("both", 0.001): 71.8, ("both", 0.01): 77.3, ("both", 0.05): 78.7,
}
PAPER_STEM = {"a": 73.1, "b": 75.3, "c": 77.6, "d": 78.5}


def format_cell(runs: list[dict], key: str = "map") -> str:
    """mAP (%) of one grid cell: one seed as is, several as mean ± standard deviation; NAN when a
    seed diverged; n/a when the metric does not apply (e.g. no small objects in the data)."""
    if not runs:
        return "—"
    diverged = sum(r["status"] == "diverged" for r in runs)
    if diverged:
        return "NAN" if len(runs) == 1 else f"NAN ({diverged}/{len(runs)} seeds)"
    values = [r.get(key) for r in runs]
    if any(v is None for v in values):
        return "n/a"
    values = [100 * v for v in values]
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f} ({len(values)} seeds)"


def _paper(value) -> str:
    return "NAN" if value is None else f"{value:.1f}"


def ablation_table(kind: str, settings: dict, lrs: list, results: list[dict], budget_iters: int,
                   batch_size: int) -> str:
    def cell(setting, lr, key="map"):
        return format_cell([r for r in results if r["setting"] == setting and r["lr"] == lr], key)

    models = sorted({s.model for s in settings.values()})
    budget = f"{budget_iters} iterations of batch {batch_size}"
    lines = []
    if kind == "bn-lr":
        head = "| BN in backbone | BN in head | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |"
        rule = "|:-:|:-:|" + "--:|" * len(lrs)
        lines += [f"**Table 1, measured**: {', '.join(models)} from scratch, {budget}, VOC07 mAP (%) on the "
                  "validation split; NAN: the loss went non-finite and the run was stopped.", "", head, rule]
        for s in settings.values():
            marks = ["✓" if s.overrides.get(k, True) else "" for k in ("bn_backbone", "bn_head")]
            lines.append(f"| {marks[0]} | {marks[1]} | " + " | ".join(cell(s.key, lr) for lr in lrs) + " |")
        lines += ["", "**Paper** (VGG16-SSD300 from scratch, trained on VOC07+12, VOC07 test mAP):", "", head, rule]
        for s in settings.values():
            marks = ["✓" if s.overrides.get(k, True) else "" for k in ("bn_backbone", "bn_head")]
            lines.append(f"| {marks[0]} | {marks[1]} | "
                         + " | ".join(_paper(PAPER_BN_LR[(s.key, lr)]) if (s.key, lr) in PAPER_BN_LR else "—"
                                      for lr in lrs) + " |")
    else:
        lr = lrs[0]
        lines += [f"**Stem study, measured**: ResNet-18 SSD variants from scratch, {budget}, lr {lr:g}; "
                  "VOC07 mAP (%) on the validation split, the same restricted to objects under 32 px at the "
                  "network input, and COCO AP_S (pycocotools). Paper: VOC07 test mAP.", "",
                  "| Stem | VOC07 mAP | mAP, objects < 32 px | COCO AP_S | paper mAP |", "|---|--:|--:|--:|--:|"]
        for s in settings.values():
            lines.append(f"| {s.label} | {cell(s.key, lr)} | {cell(s.key, lr, 'map_small')} | "
                         f"{cell(s.key, lr, 'coco_ap_small')} | {_paper(PAPER_STEM.get(s.key))} |")
    return "\n".join(lines) + "\n"


def plot_ablation_figures(out: str, settings: dict, lrs: list, run_dirs: dict) -> list[str]:
    """One ``figure1_lr<lr>.png`` per learning rate: the settings' curves overlaid."""
    paths = []
    for lr in lrs:
        curves = {}
        for s in settings.values():
            records = read_jsonl(os.path.join(run_dirs[(s.key, lr)], "metrics.jsonl"))
            if records:
                curves[s.label] = records
        if curves:
            paths.append(plot_figure1(curves, os.path.join(out, f"figure1_lr{lr:g}.png"),
                                      f"lr {lr:g}: training loss, gradient L2 norm and its fluctuation"))
    return paths
