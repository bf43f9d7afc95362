"""Models: the CIFAR ResNets with defense positions, a registry, and insertion into any model."""
from .insert import insert_after
from .registry import POSITIONS, create_model, list_models, register_model
from .resnet_cifar import CifarResNet

__all__ = ["POSITIONS", "CifarResNet", "create_model", "insert_after", "list_models", "register_model"]
