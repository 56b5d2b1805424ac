"""Pictures of detections (torchvision's box drawing) and of training curves (matplotlib)."""
from __future__ import annotations

import math
import os

import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor
from torchvision.utils import draw_bounding_boxes, make_grid

from .training_log import read_jsonl

PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
           "#fabed4", "#469990", "#dcbeff", "#9a6324", "#800000", "#aaffc3", "#808000", "#000075"]


def draw_detections(image, boxes, labels, scores, class_names, score_threshold: float = 0.3):
    """A uint8 CHW tensor with labelled boxes for the detections scoring >= score_threshold."""

    img = pil_to_tensor(image) if not torch.is_tensor(image) else image
    keep = scores >= score_threshold
    boxes, labels, scores = boxes[keep], labels[keep], scores[keep]
    names = [f"{class_names[int(l) - 1] if 0 < int(l) <= len(class_names) else int(l)} {float(s):.2f}"
             for l, s in zip(labels, scores)]
    colors = [PALETTE[(int(l) - 1) % len(PALETTE)] for l in labels]
    if len(names) == 0:
        return img
    return draw_bounding_boxes(img, boxes.float(), labels=names, colors=colors, width=2)


def save_grid(images: list, path: str, ncol: int = 4) -> str:
    """Save uint8 CHW tensors (any sizes) as one picture, each padded to the largest."""

    h = max(int(i.shape[1]) for i in images)
    w = max(int(i.shape[2]) for i in images)
    padded = [torch.nn.functional.pad(i, (0, w - i.shape[2], 0, h - i.shape[1]), value=255) for i in images]
    grid = make_grid(padded, nrow=min(ncol, len(padded)), padding=4, pad_value=255)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)
    return path


def _smooth(values, alpha: float = 0.9):
    out, acc = [], None
    for v in values:
        if not math.isfinite(v):
            out.append(float("nan"))
            continue
        acc = v if acc is None else alpha * acc + (1 - alpha) * v
        out.append(acc)
    return out


FIGURE1_SERIES = (("loss", "training loss"), ("grad_norm", "L2 norm of gradient"),
                  ("grad_fluct", "fluctuation of gradient L2 norm"))


def plot_figure1(curves: dict, path: str, title: str | None = None) -> str:
    """The paper's Figure 1 for several runs: training loss, gradient L2 norm and its fluctuation,
    three panels, one smoothed curve per run. ``curves``: label -> the run's step records."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    positive = {key: False for key, _ in FIGURE1_SERIES}
    for label, records in curves.items():
        steps = [r for r in records if not r.get("eval")]
        it = [r["iter"] for r in steps]
        for ax, (key, _) in zip(axes, FIGURE1_SERIES):
            values = _smooth([r[key] for r in steps])
            positive[key] |= any(v > 0 for v in values if math.isfinite(v))
            ax.plot(it, values, lw=1.5, label=label)
    for ax, (key, name) in zip(axes, FIGURE1_SERIES):
        ax.set_title(name)
        ax.set_xlabel("iteration")
        if positive[key]:
            ax.set_yscale("log")      # a diverging run spans many orders of magnitude
    axes[0].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_run(run_dir: str, out_dir: str | None = None) -> list[str]:
    """PNG plots of a run's metrics.jsonl: loss, gradient L2 norm, its fluctuation, mAP, and Figure 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = os.path.join(run_dir, "metrics.jsonl")
    records = read_jsonl(path)
    steps = [r for r in records if not r.get("eval")]
    evals = [r for r in records if r.get("eval")]
    if not steps:
        raise FileNotFoundError(f"no training metrics in {path}")
    out_dir = out_dir or os.path.join(run_dir, "plots")
    os.makedirs(out_dir, exist_ok=True)
    it = [r["iter"] for r in steps]
    series = {
        "loss": ("training loss", [r["loss"] for r in steps]),
        "grad_norm": ("L2 norm of gradient", [r["grad_norm"] for r in steps]),
        "grad_fluct": ("fluctuation of gradient L2 norm", [r["grad_fluct"] for r in steps]),
    }
    written = []
    for key, (title, values) in series.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(it, values, alpha=0.3, lw=0.8, label="per step")
        ax.plot(it, _smooth(values), lw=1.5, label="smoothed")
        ax.set_xlabel("iteration")
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        written.append(os.path.join(out_dir, f"{key}.png"))
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))  # the paper's Figure 1 layout
    for ax, (key, (title, values)) in zip(axes, series.items()):
        ax.plot(it, _smooth(values), lw=1.5)
        ax.set_title(title)
        ax.set_xlabel("iteration")
    fig.tight_layout()
    written.append(os.path.join(out_dir, "figure1.png"))
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    if evals:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["iter"] for r in evals], [r["map"] for r in evals], marker="o")
        ax.set_xlabel("iteration")
        ax.set_ylabel("VOC07 mAP")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(os.path.join(out_dir, "map.png"))
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written
