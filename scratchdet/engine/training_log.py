"""The training log (metrics.jsonl: one JSON line per step and per evaluation) and the paper's Figure 1
gradient statistics."""
from __future__ import annotations

import json
import math
import os


class JSONLWriter:
    """Appends one JSON object per line; flushes each line so a crash loses nothing."""

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")

    def truncate_after(self, iteration: int) -> None:
        """On resume, drop records of steps that will be run again."""
        if not os.path.exists(self.path):
            return
        kept = [line for line in open(self.path) if line.strip() and json.loads(line).get("iter", -1) <= iteration]
        with open(self.path, "w") as f:
            f.writelines(kept)


def read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut by a crash
    return out


class GradFluctuation:
    """|‖g_t‖ − ‖g_{t−1}‖|: how much the gradient's L2 norm jumps from step to step (Figure 1c)."""

    def __init__(self):
        self.prev = None

    def update(self, norm: float) -> float:
        if not math.isfinite(norm):
            return float("nan")
        fluct = 0.0 if self.prev is None else abs(norm - self.prev)
        self.prev = norm
        return fluct

    def state_dict(self) -> dict:
        return {"prev": self.prev}

    def load_state_dict(self, state: dict) -> None:
        self.prev = state.get("prev")
