"""Training checkpoints in a run folder: names, listing, pruning, safe loading (with a fall-back
past damaged files) and the global RNG states they carry. Writes go through the one atomic
writer, ``scratchdet.structures.files.atomic_save``."""
from __future__ import annotations

import glob
import os
import random
import re

import numpy as np
import torch

from ..structures.errors import CheckpointError


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state()[1].tolist(),
        "numpy_pos": int(np.random.get_state()[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in state["python"]))
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str) -> dict:
    """Load a training checkpoint without running code from it. A missing file is a
    FileNotFoundError; a truncated, damaged or foreign one a one-line CheckpointError naming it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, tampered, or not a checkpoint at all
        raise CheckpointError(f"cannot read checkpoint {path}: it is truncated, corrupt or not a scratchdet "
                              f"checkpoint ({type(exc).__name__}: {_first_line(exc)})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "iteration" not in ckpt:
        raise CheckpointError(f"{path} is not a scratchdet training checkpoint (missing model/iteration)")
    return ckpt


def _first_line(exc: BaseException) -> str:
    """The first sentence of torch's message: what failed, without its advice to load with
    weights_only=False (running code from a damaged or foreign file is no fix)."""
    text = str(exc).strip()
    return text.splitlines()[0].split(". ")[0][:200] if text else "no message"


def load_newest_checkpoint(out_dir: str) -> tuple[str, dict, list[tuple[str, str]]]:
    """The newest checkpoint of ``out_dir`` that loads: ``(path, checkpoint, skipped)``, where
    ``skipped`` lists the newer files that did not load and why. FileNotFoundError when the run has
    no checkpoint; CheckpointError when none of them loads."""
    paths = list_checkpoints(out_dir)
    if not paths:
        raise FileNotFoundError(f"--resume: no checkpoint in {os.path.join(out_dir, 'checkpoints')}")
    skipped = []
    for path in reversed(paths):
        try:
            return path, load_checkpoint(path), skipped
        except (CheckpointError, FileNotFoundError) as exc:   # FileNotFoundError: pruned meanwhile
            skipped.append((path, str(exc)))
    raise CheckpointError(f"--resume: none of the {len(paths)} checkpoints in {os.path.dirname(paths[0])} "
                          f"loads (the newest: {skipped[0][1]})")


def checkpoint_path(out_dir: str, iteration: int) -> str:
    return os.path.join(out_dir, "checkpoints", f"iter_{iteration:08d}.pt")


def list_checkpoints(out_dir: str) -> list[str]:
    """The run's checkpoints, oldest first."""
    paths = glob.glob(os.path.join(out_dir, "checkpoints", "iter_*.pt"))
    return sorted(paths, key=lambda p: int(re.findall(r"iter_(\d+)", p)[-1]))


def latest_checkpoint(out_dir: str) -> str | None:
    paths = list_checkpoints(out_dir)
    return paths[-1] if paths else None


def prune_checkpoints(out_dir: str, keep_last: int) -> None:
    for path in list_checkpoints(out_dir)[:-keep_last]:
        os.unlink(path)
