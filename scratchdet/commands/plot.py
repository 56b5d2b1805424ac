"""`scratchdet plot RUN_DIR`: PNGs of loss, gradient norm, its fluctuation and mAP."""
from ..engine.visualize import plot_run
from ._common import CLIError


def register(sub):
    p = sub.add_parser("plot", help="plot a run's training curves (loss, gradient norm, fluctuation, mAP)",
                       description="Read RUN_DIR/metrics.jsonl and write PNGs: loss, the gradient's L2 norm, its "
                                   "fluctuation (the paper's Figure 1), and mAP over training.")
    p.add_argument("run_dir", help="a training run folder (holds metrics.jsonl)")
    p.add_argument("--out", help="where to write the PNGs (default: RUN_DIR/plots)")
    p.set_defaults(func=run)


def run(args):
    try:
        paths = plot_run(args.run_dir, args.out)
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from None
    for path in paths:
        print(path)
    return 0
