"""Export the network's raw outputs, forward_raw(images) -> (loc [B,P,4], logits [B,P,C]).

Post-processing stays in scratchdet.ops.detect (a custom op ONNX runtimes don't have);
the CLI saves the priors beside the exported file so a runtime can decode.
"""
from __future__ import annotations

import os

import torch

from .ssd import SSDRawOutputs


def _example(model, batch_size: int) -> torch.Tensor:
    device = model.priors.device
    return torch.zeros(batch_size, 3, *model.input_size, device=device)


def export_program(model, path: str, batch_size: int = 1) -> str:
    """A torch.export program (.pt2) with a dynamic batch dimension."""
    model = model.eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(SSDRawOutputs(model), (_example(model, max(batch_size, 2)),),
                                  dynamic_shapes=({0: batch},))
    torch.export.save(program, os.fspath(path))
    return os.fspath(path)


def export_onnx(model, path: str, batch_size: int = 1, opset: int = 18) -> str:
    """ONNX (through the dynamo exporter) with inputs 'images' and outputs 'loc', 'logits'; dynamic batch."""
    model = model.eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(SSDRawOutputs(model), (_example(model, max(batch_size, 2)),), dynamo=True,
                                input_names=["images"], output_names=["loc", "logits"], opset_version=opset,
                                dynamic_shapes=({0: batch},))
    program.save(os.fspath(path))
    return os.fspath(path)
