"""Sharpness-Aware Minimization (SAM): descend with the gradient taken at the worst nearby weights.

Foret, Kleiner, Mobahi & Neyshabur 2021, "Sharpness-Aware Minimization for Efficiently Improving
Generalization", Section 2. SAM minimises max_{||eps||_2 <= rho} L(w + eps). Its first-order
solution (Eq. 2) is eps(w) = rho g / ||g||_2 with g = grad L(w), and the update uses the gradient
at w + eps(w) (Eq. 3, with the second-order term dropped as in the paper). Each step thus costs two
forward and backward passes. The norm runs over all trainable parameters together (the paper's
m-sharpness with m = the batch); weight decay stays in the optimizer, outside the ascent.

Batch norm: the second pass normalises with its own batch statistics (as the paper's training
does) but does not update the running statistics, so they stay those of the unperturbed weights
(the convention of the widely used PyTorch implementation, davda54/sam).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn


@torch.no_grad()
def ascend(params: Sequence[torch.Tensor], rho: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Move ``params`` in place to w + eps(w), eps = rho g / ||g||_2 (Foret et al. 2021, Eq. 2).

    Args:
        params: trainable tensors whose ``.grad`` holds g = grad L(w) (parameters without a
            gradient are left where they are).
        rho: radius of the neighbourhood, > 0.

    Returns:
        (parameter, eps) pairs, one per parameter with a gradient, for :func:`descend_back`.
    """
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        return []
    grads = [p.grad for p in with_grad]
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    # A zero gradient has no direction: the step is then zero rather than nan.
    steps = torch._foreach_mul(grads, rho / (norm + 1e-12))
    torch._foreach_add_(with_grad, steps)
    return list(zip(with_grad, steps))


@torch.no_grad()
def descend_back(steps: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Undo :func:`ascend`: move each parameter back by its eps (their ``.grad``, computed in
    between, then holds the gradient at w + eps, which the optimizer applies at w)."""
    if steps:
        params, eps = zip(*steps)
        torch._foreach_sub_(list(params), list(eps))


@contextmanager
def frozen_batch_norm_stats(model: nn.Module) -> Iterator[None]:
    """Inside, batch-norm layers in training mode still normalise with batch statistics but
    leave their running statistics and batch counters untouched."""
    saved = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            saved.append((module, module.momentum,
                          None if module.num_batches_tracked is None else module.num_batches_tracked.clone()))
            # momentum 0: running = (1 - 0) * running + 0 * batch, i.e. unchanged.
            module.momentum = 0.0
    try:
        yield
    finally:
        for module, momentum, tracked in saved:
            module.momentum = momentum
            if tracked is not None:
                module.num_batches_tracked.copy_(tracked)
