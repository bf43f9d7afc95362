"""SmoothBlock: a randomised defense against adversarial examples, as a torch library.

Thesis: "Defending Visual Adversarial Examples with SmoothOut Regularization". Layers
(SmoothBlock, DropBlock, the mixed layer), CIFAR ResNets with the thesis' five defense
positions, the self-ensemble, data, attacks (torchattacks), training, and ``load_model``.
"""
from .config import Config
from .defended import build_model
from .ensemble import SelfEnsemble
from .errors import CheckpointError, ConfigError, DataError, SmoothBlockError
from .hub import list_pretrained, load_model
from .layers import DropBlock, MixedBlock, SmoothBlock, drop_block, mixed_block, smooth_block
from .models import create_model, insert_after, list_models

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "Config", "ConfigError", "DataError", "DropBlock", "MixedBlock", "SelfEnsemble",
    "SmoothBlock", "SmoothBlockError", "build_model", "create_model", "drop_block", "insert_after",
    "list_models", "list_pretrained", "load_model", "mixed_block", "smooth_block",
]
