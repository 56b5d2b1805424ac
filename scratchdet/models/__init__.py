"""scratchdet.models: SSD detectors (Root-ResNet, ResNet, VGG16, timm or any backbone), priors,
MultiBoxLoss, the typed SSDConfig, save/load."""
from .layers import NORMS, BasicBlock, ConvNormAct, L2Norm, convert_norms, init_weights
from .loss import MultiBoxLoss
from .priors import generate_priors, prior_sizes, ssd_prior_sizes
from .config import SSDConfig
from .registry import MODEL_PRESETS, build_detector, build_model, describe_model, list_models
from .ssd import SSD, SSDRawOutputs

__all__ = ["NORMS", "BasicBlock", "ConvNormAct", "L2Norm", "convert_norms", "init_weights", "MultiBoxLoss",
           "generate_priors", "prior_sizes", "ssd_prior_sizes", "MODEL_PRESETS", "build_detector", "build_model",
           "describe_model", "list_models", "SSD", "SSDConfig", "SSDRawOutputs"]
