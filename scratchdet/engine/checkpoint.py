"""Training checkpoints and output folders: atomic writes, keep the last N and the best, safe loading."""
from __future__ import annotations

import glob
import os
import random
import re
import tempfile

import numpy as np
import torch


def atomic_save(obj, path: str) -> None:
    """torch.save to a temp file in the same folder, fsync, then rename over `path`.

    A crash at any point leaves either the old file or the new one, never half of one.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def make_writable_dir(path: str) -> None:
    """Create ``path`` if needed and write a probe file there; OSError if that fails. The probe has
    a unique name, so processes checking one folder at once (torchrun's ranks) do not delete each
    other's."""
    os.makedirs(path, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
    try:
        os.write(fd, b"ok")
    finally:
        os.close(fd)
        os.unlink(probe)


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
    """Load a training checkpoint without running code from it; clear errors for bad files."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, tampered, or not a checkpoint at all
        raise RuntimeError(f"cannot read checkpoint {path}: it is truncated, corrupt or not a scratchdet "
                           f"checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "iteration" not in ckpt:
        raise RuntimeError(f"{path} is not a scratchdet training checkpoint (missing model/iteration)")
    return ckpt


def checkpoint_path(out_dir: str, iteration: int) -> str:
    return os.path.join(out_dir, "checkpoints", f"iter_{iteration:08d}.pt")


def list_checkpoints(out_dir: str) -> list[str]:
    paths = glob.glob(os.path.join(out_dir, "checkpoints", "iter_*.pt"))
    return sorted(paths, key=lambda p: int(re.findall(r"iter_(\d+)", p)[-1]))


def latest_checkpoint(out_dir: str) -> str | None:
    paths = list_checkpoints(out_dir)
    return paths[-1] if paths else None


def prune_checkpoints(out_dir: str, keep_last: int) -> None:
    for path in list_checkpoints(out_dir)[:-keep_last]:
        os.unlink(path)
