"""Shared test helpers (importable from every test module)."""
import pytest
import torch

from conftest import DEVICES, random_boxes  # noqa: F401

try:
    from hypothesis import given, settings, strategies as st  # noqa: F401
except ImportError:  # a GPU machine may lack hypothesis: its property tests skip, the rest of the module runs
    class _AnyStrategy:
        """Stands in for hypothesis.strategies: every attribute and call gives another stand-in."""

        def __getattr__(self, name):
            return self

        def __call__(self, *args, **kwargs):
            return self

    st = _AnyStrategy()

    def settings(*args, **kwargs):
        return lambda f: f

    def given(*args, **kwargs):
        def skipped(f):
            def test():
                pytest.skip("hypothesis is not installed")
            test.__name__, test.__doc__ = f.__name__, f.__doc__
            return test
        return skipped


def non_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values as ``t``, laid out non-contiguously (every other column of a wider tensor)."""
    wide = torch.empty(*t.shape[:-1], t.shape[-1] * 2, dtype=t.dtype, device=t.device)
    wide[..., ::2] = t
    out = wide[..., ::2]
    assert not out.is_contiguous() and torch.equal(out, t)
    return out
