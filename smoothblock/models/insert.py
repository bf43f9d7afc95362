"""Put block layers after named modules of any nn.Module (a torchvision ResNet18, say)."""
from __future__ import annotations

from collections.abc import Callable, Mapping

from torch import nn


class After(nn.Sequential):
    """``module`` followed by ``layer``; keeps the original's state-dict keys under ``0.``."""

    def __init__(self, module: nn.Module, layer: nn.Module) -> None:
        super().__init__(module, layer)


def insert_after(model: nn.Module, layers: Mapping[str, Callable[[], nn.Module]]) -> nn.Module:
    """Insert ``layers[name]()`` right after the submodule called ``name``, in place.

    Args:
        model: any module, e.g. ``torchvision.models.resnet18()``.
        layers: submodule name as in ``model.named_modules()`` (for example ``"layer1"`` or
            ``"layer2.0.relu"``) -> factory of the layer to put after it.

    Returns:
        ``model`` itself, modified. Note that the wrapped submodule's state-dict keys gain a ``0.``.
        Raises ValueError naming the first name that is not a submodule.
    """
    named = dict(model.named_modules())
    for name in layers:
        if not name or name not in named:
            raise ValueError(f"{name!r} is not a submodule of {type(model).__name__}")
    for name, factory in layers.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, After(getattr(parent, child), factory()))
    return model
