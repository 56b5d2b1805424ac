import subprocess
import sys

import torch

import scratchdet
from scratchdet.ops._extension import parse_build_info


def test_extension_loaded_with_cpu_kernels():
    info = scratchdet.ops.build_info()
    assert info["extension_loaded"], info["load_error"]
    assert info["cpu_kernels"]
    assert info["torch_version_built"] == torch.__version__.split("+")[0]
    assert info["openmp"], "CPU kernels were compiled without OpenMP: at::parallel_for would run serially"


def test_ops_are_registered_in_torch_ops():
    assert callable(torch.ops.scratchdet.box_iou)
    schema = torch.ops.scratchdet.box_iou.default._schema
    assert str(schema) == "scratchdet::box_iou(Tensor boxes1, Tensor boxes2) -> Tensor"


def test_build_info_lists_cuda_arch_when_cuda_compiled():
    info = scratchdet.ops.build_info()
    if info["cuda_kernels"]:
        assert info["cuda_arch_list"], "CUDA kernels compiled but no arch list recorded"
        assert info["cuda_version_built"]
    else:
        assert info["cuda_arch_list"] == []


def test_fallback_without_extension_warns_once_and_still_works():
    # A fresh interpreter in which importing scratchdet._C fails.
    code = r"""
import sys, warnings, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "scratchdet._C":
            raise ImportError("blocked for the test")
sys.meta_path.insert(0, Block())
import torch, scratchdet
assert not scratchdet.ops.build_info()["extension_loaded"]
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    a = torch.tensor([[0., 0., 1., 1.]]); b = torch.tensor([[0., 0., 1., 2.]])
    r1 = scratchdet.ops.box_iou(a, b); r2 = scratchdet.ops.box_iou(a, b)
msgs = [str(x.message) for x in w if "reference" in str(x.message)]
assert len(msgs) == 1, msgs
assert "blocked for the test" in msgs[0]
assert abs(r1.item() - 0.5) < 1e-7
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_build_info_parses_an_arch_list_that_holds_semicolons():
    # setup.py picks e.g. "7.5;8.0;9.0+PTX" from nvcc when no GPU is visible (the README's setup)
    raw = parse_build_info("cpu=1;cuda=1;cuda_arch_list=7.5;8.0;9.0+PTX;torch_version=2.14.1;openmp=1")
    assert raw == {"cpu": "1", "cuda": "1", "cuda_arch_list": "7.5;8.0;9.0+PTX", "torch_version": "2.14.1",
                   "openmp": "1"}
    assert parse_build_info("") == {}
    assert parse_build_info("cuda_arch_list=9.0;cpu=0") == {"cuda_arch_list": "9.0", "cpu": "0"}
