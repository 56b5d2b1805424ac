"""scratchdet.models: SSD detectors (Root-ResNet, ResNet, VGG16), priors, MultiBoxLoss, save/load."""
from .layers import BasicBlock, ConvBNAct, L2Norm, init_weights
from .loss import MultiBoxLoss
from .priors import generate_priors, prior_sizes
from .registry import PRESETS, build_model, describe_model, list_models
from .ssd import SSD, SSDRawOutputs

__all__ = ["BasicBlock", "ConvBNAct", "L2Norm", "init_weights", "MultiBoxLoss", "generate_priors", "prior_sizes",
           "PRESETS", "build_model", "describe_model", "list_models", "SSD", "SSDRawOutputs"]
