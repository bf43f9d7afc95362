"""Model registry: architecture name -> factory, so configurations name models as data."""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .resnet_cifar import POSITION_SIZES, CifarResNet

_MODELS: dict[str, Callable[..., nn.Module]] = {}
#: Feature-map side at each defense position, per architecture, for its native input size.
POSITIONS: dict[str, dict[int, int]] = {}


def register_model(name: str, positions: dict[int, int]):
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _MODELS[name] = fn
        POSITIONS[name] = positions
        return fn
    return wrap


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered architecture; ``kwargs`` go to its factory (num_classes, defenses)."""
    if name not in _MODELS:
        raise ValueError(f"unknown arch {name!r}; choose one of {', '.join(list_models())}")
    return _MODELS[name](**kwargs)


for _depth in (20, 32, 44, 56):
    register_model(f"resnet{_depth}", POSITION_SIZES)(
        lambda depth=_depth, **kw: CifarResNet(depth=depth, **kw)
    )
