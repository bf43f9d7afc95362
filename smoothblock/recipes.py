"""Training recipes: optimizer, learning-rate schedule and loss of each named recipe.

Schedules are pure functions of the step, so resuming needs only the step count.
"""
from __future__ import annotations

import math
import torch
from torch import nn

from .config import Config
from .settings import Settings


class Recipe(Settings):
    """Resolved hyperparameters of one training run (:func:`resolve_recipe`)."""

    name: str
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    label_smoothing: float

    @classmethod
    def source_name(cls) -> str:
        return "recipe"

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        if self.name == "paper":
            return torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        decay = [p for p in model.parameters() if p.ndim > 1]
        no_decay = [p for p in model.parameters() if p.ndim <= 1]  # BN and biases: no weight decay
        return torch.optim.SGD([{"params": decay, "weight_decay": self.weight_decay},
                                {"params": no_decay, "weight_decay": 0.0}],
                               lr=self.lr, momentum=0.9, nesterov=True)

    def lr_at(self, step: int, steps_per_epoch: int) -> float:
        """Learning rate for optimizer step ``step`` (0-based)."""
        epoch = step / steps_per_epoch
        if self.name == "paper":
            # Thesis Section 4.1: x0.1 at epoch 80, then x0.5 at epoch 180.
            return self.lr * (0.1 if epoch >= 80 else 1.0) * (0.5 if epoch >= 180 else 1.0)
        # One-cycle: linear warm-up over the first 15% of steps, then cosine down to zero.
        total = self.epochs * steps_per_epoch
        warmup = max(1, int(0.15 * total))
        if step < warmup:
            return self.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


_DEFAULTS = {
    # Thesis Section 4.1.
    "paper": dict(epochs=200, batch_size=128, lr=1e-3, weight_decay=0.0, label_smoothing=0.0),
    # SGD with Nesterov momentum and a one-cycle schedule, in half the thesis' epochs (a 2-core
    # CPU trains a ResNet20 epoch in about 2.5 min). No label smoothing by default: it flattens
    # the logits and so masks gradients, which inflates the robustness of exactly the undefended
    # baselines a defense is compared to.
    "fast": dict(epochs=100, batch_size=128, lr=0.1, weight_decay=5e-4, label_smoothing=0.0),
}


def resolve_recipe(cfg: Config) -> Recipe:
    """The recipe ``cfg.recipe`` with ``cfg``'s epochs, batch_size, lr, weight_decay and
    label_smoothing applied (where not None)."""
    values = dict(_DEFAULTS[cfg.recipe])
    for name in ("epochs", "batch_size", "lr", "weight_decay", "label_smoothing"):
        if getattr(cfg, name) is not None:
            values[name] = getattr(cfg, name)
    return Recipe(name=cfg.recipe, **values)
