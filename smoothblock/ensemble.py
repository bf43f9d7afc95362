"""Self-ensemble (thesis Section 4.5): the average of the softmax of ``ensemble`` stochastic passes.

Following Liu et al. 2018 (Random Self-Ensemble), the prediction is ``mean_k softmax(f_k(x))``
over ``ensemble`` draws of the model's randomness. The passes are batched: the input's deterministic
prefix (everything before the first active random layer) is computed once and repeated, and only
the stochastic suffix runs ``ensemble`` times. Attacks see the whole ensemble.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .layers import RandomBlockLayer


def _split_stages(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]] | None:
    """(deterministic prefix, rest) of a staged model, or None when the model is not staged."""
    stages = getattr(model, "stages", None)
    if not isinstance(stages, nn.ModuleDict):
        return None
    modules = list(stages.values())
    for i, module in enumerate(modules):
        if any(isinstance(m, RandomBlockLayer) and m.active for m in module.modules()):
            return modules[:i], modules[i:]
    return modules, []


class SelfEnsemble(nn.Module):
    """Average the softmax of ``ensemble`` stochastic passes of ``model`` (the configuration's
    ``ensemble``: one name for the number of passes).

    Args:
        model: maps images (N, C, H, W) to logits (N, K). Models with a ``stages`` ModuleDict whose
            forward runs the stages in order
            (the CIFAR ResNets) get prefix reuse; any other model runs the full passes, batched.
        ensemble: number of passes.
        max_rows: at most this many rows go through the suffix at once (memory bound).

    Returns from forward:
        ``log(mean_k softmax(f_k(x)))``, shape (N, K): log-probabilities, which are valid logits
        (their softmax is the ensemble's probability), so cross-entropy attacks apply unchanged.
    """

    def __init__(self, model: nn.Module, ensemble: int, *, max_rows: int = 8192) -> None:
        super().__init__()
        if ensemble < 1:
            raise ValueError(f"ensemble must be >= 1, got {ensemble}")
        self.model = model
        self.ensemble = ensemble
        self.max_rows = max_rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        split = _split_stages(self.model)
        if split is None:
            prefix, suffix = [], [self.model]
        else:
            prefix, suffix = split
        for module in prefix:
            x = module(x)
        if not suffix:  # nothing random is active: all the passes would agree
            return torch.log_softmax(x, dim=1)
        batch = x.shape[0]
        passes_per_chunk = max(1, self.max_rows // max(batch, 1))
        log_probs = []
        for start in range(0, self.ensemble, passes_per_chunk):
            k = min(passes_per_chunk, self.ensemble - start)
            h = x.repeat_interleave(k, dim=0)
            for module in suffix:
                h = module(h)
            log_probs.append(torch.log_softmax(h.float(), dim=1).view(batch, k, -1))
        stacked = torch.cat(log_probs, dim=1)
        return torch.logsumexp(stacked, dim=1) - math.log(self.ensemble)

    def extra_repr(self) -> str:
        return f"ensemble={self.ensemble}"
