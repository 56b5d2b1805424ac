"""A user backbone for `scratchdet compare --models docs/compare_user_backbone.py:TinyPlainNet`.

The factory takes no arguments and returns an ``nn.Module`` whose forward gives feature maps,
finest first; ``scratchdet.build_detector`` adds the SSD extra layers, priors and heads.
"""
import torch.nn as nn


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyPlainNet(nn.Module):
    """A plain (no residuals) stride-2 stem net: sources at strides 8 and 16."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(_conv(3, width, 2), _conv(width, width, 1), _conv(width, 2 * width, 2))
        self.stage3 = nn.Sequential(_conv(2 * width, 4 * width, 2), _conv(4 * width, 4 * width, 1))
        self.stage4 = nn.Sequential(_conv(4 * width, 8 * width, 2), _conv(8 * width, 8 * width, 1))

    def forward(self, x):
        c3 = self.stage3(self.stem(x))
        return [c3, self.stage4(c3)]
