"""Precision-recall curves as a PNG."""
from __future__ import annotations


def plot_pr_curves(result, path, class_names=None, title=None):
    """Save the per-class precision-recall curves of ``voc_eval(..., return_curves=True)`` to ``path``.

    Uses matplotlib's Agg backend (no display needed). Returns ``path``.
    """
    if "curves" not in result:
        raise ValueError("plot_pr_curves: the result has no curves; call voc_eval(..., return_curves=True)")
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 5), dpi=100)
    ax = fig.add_subplot()
    for label, (recall, precision) in sorted(result["curves"].items()):
        name = class_names[label - 1] if class_names and 0 < label <= len(class_names) else str(label)
        ax.plot(recall, precision, label=f"{name} (AP {100 * result['ap'].get(label, 0.0):.1f})", lw=1.5)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title or f"precision-recall, mAP {100 * result['map']:.1f}%")
    ax.grid(alpha=0.3)
    if result["curves"]:
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    return path
