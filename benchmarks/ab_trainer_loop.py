"""Seconds for N training iterations of the demo recipe (no evaluation, no checkpoint) in the tree
first on the path, to compare two versions of the training loop on the same data:

    for r in 1 2 3; do for t in OLD_TREE NEW_TREE; do
        PYTHONPATH=$t python benchmarks/ab_trainer_loop.py DATA 80; done; done

DATA: a VOC-layout folder with train/val splits (e.g. the demo's demo_out/data). Interleave the
trees, take medians, and run nothing else meanwhile.
"""
import sys
import tempfile
import time
import warnings

from scratchdet.engine.config import make_config
from scratchdet.engine.trainer import Trainer


def main() -> None:
    if len(sys.argv) != 3 or not sys.argv[2].isdigit() or int(sys.argv[2]) < 1:
        sys.exit("usage: ab_trainer_loop.py DATA ITERATIONS (>= 1)")
    warnings.filterwarnings("ignore")
    data, iterations = sys.argv[1], int(sys.argv[2])
    cfg = make_config("demo", {"data_root": data, "out_dir": tempfile.mkdtemp(), "dataset": "voc",
                               "max_iters": iterations, "eval_every": 0, "ckpt_every": 10**6})
    with Trainer(cfg, progress=False) as trainer:
        start = time.perf_counter()
        trainer.train()
        print(f"{time.perf_counter() - start:.2f}")


if __name__ == "__main__":
    main()
