"""Shared test helpers (importable from every test module)."""
import torch

from conftest import DEVICES, random_boxes  # noqa: F401


def non_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values as ``t``, laid out non-contiguously (every other column of a wider tensor)."""
    wide = torch.empty(*t.shape[:-1], t.shape[-1] * 2, dtype=t.dtype, device=t.device)
    wide[..., ::2] = t
    out = wide[..., ::2]
    assert not out.is_contiguous() and torch.equal(out, t)
    return out
