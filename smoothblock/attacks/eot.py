"""Expectation over Transformation (Athalye et al. 2018), batched, and only where there is randomness.

An EOT attack follows the gradient of the loss averaged over draws of the defense's randomness.
Computed as torchattacks does it, that is ``draws`` full forward and backward passes one after
another. Here:

* a model with no active random layer (an undefended base, or a defense that is off at test time)
  gets one draw: all draws of a deterministic model are the same pass;
* the draws go through the model as one batch (draw-major: row ``d * N + i`` is draw ``d`` of image
  ``i``), with the deterministic prefix (the stages before the first active random layer) computed
  once per step, as :class:`smoothblock.ensemble.SelfEnsemble` does for its passes. A
  self-ensemble of ``k`` passes is drawn ``draws x k`` times in the same batch.

The draws are independent whichever way they are batched, so the gradient is the same estimate;
with a single random layer and torch's CPU generator the batch consumes the random stream as the
loop does, so the two give the same gradient to float tolerance (``tests/test_eot.py``).
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..defended import Autocast
from ..ensemble import SelfEnsemble, _split_stages
from ..layers import RandomBlockLayer

#: At most this many rows (images x draws x passes) go through the model at once: a CPU keeps
#: small batches in its caches, and a draw's activations are held until the backward pass.
EOT_ROWS = {"cpu": 256, "cuda": 65536}


def is_random(model: nn.Module) -> bool:
    """Whether a forward pass of ``model`` in its current mode draws anything."""
    return any(isinstance(m, RandomBlockLayer) and m.active for m in model.modules())


def eot_draws(model: nn.Module, draws: int) -> int:
    """``draws`` for a random model, one for a deterministic one."""
    return draws if is_random(model) else 1


def _unwrap(model: nn.Module) -> tuple[nn.Module, SelfEnsemble | None, str | None]:
    """(the network, its self-ensemble or None, the autocast device type or None)."""
    autocast = None
    if isinstance(model, Autocast):
        autocast, model = model.device_type, model.model
    ensemble = model if isinstance(model, SelfEnsemble) else None
    return (model.model if ensemble else model), ensemble, autocast


def _autocast(device_type: str | None):
    return torch.autocast(device_type, dtype=torch.bfloat16) if device_type else contextlib.nullcontext()


def _run(modules: list[nn.Module], h: torch.Tensor) -> torch.Tensor:
    for module in modules:
        h = module(h)
    return h


def _suffix_draws(suffix: list[nn.Module], h: torch.Tensor, draws: int, ensemble: SelfEnsemble | None) -> torch.Tensor:
    """The random rest of the network over ``draws`` (x the ensemble's passes) copies of the prefix's
    output ``h`` (N, ...), draw-major: (draws, N, K) as the model's output (logits, or the ensemble's
    log-probabilities)."""
    n, passes = h.shape[0], ensemble.ensemble if ensemble else 1
    if suffix:
        out = _run(suffix, h.repeat(draws * passes, *([1] * (h.dim() - 1)))).float().view(draws, passes, n, -1)
    else:  # nothing random is active: every draw and pass is the same
        out = h.float().view(1, 1, n, -1).expand(draws, passes, n, -1)
    if ensemble is None:
        return out[:, 0]
    # A self-ensemble's output: log of the mean of its passes' softmax, per draw.
    return torch.logsumexp(torch.log_softmax(out, dim=-1), dim=1) - math.log(passes)


def draw_logits(model: nn.Module, x: torch.Tensor, draws: int) -> torch.Tensor:
    """``draws`` independent passes of the whole defended ``model`` over ``x``, batched.

    Args:
        model: the defended model (a network, its :class:`SelfEnsemble`, either under Autocast).
        x: images (N, C, H, W) in [0, 1].
    Returns:
        (draws, N, K): each draw's output, as ``model(x)`` gives it (logits; a self-ensemble's
        log-probabilities).
    """
    network, ensemble, autocast = _unwrap(model)
    split = _split_stages(network)
    if split is None:  # not a staged network: the draws one after another
        return torch.stack([model(x) for _ in range(draws)])
    with _autocast(autocast):
        return _suffix_draws(split[1], _run(split[0], x), draws, ensemble)


def eot_gradient(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, draws: int,
                 max_rows: int | None = None) -> torch.Tensor:
    """The gradient at ``x`` of the cross-entropy summed over ``draws`` draws (each a batch mean):
    torchattacks' EOT gradient, computed as :func:`eot_loss_gradient` does.

    Args:
        x: (N, C, H, W) images in [0, 1]; labels: (N,).
    Returns:
        (N, C, H, W), the summed gradient.
    """
    _, grad, _ = _eot_backward(model, x, labels, draws, cross_entropy, max_rows)
    return grad / x.shape[0]


def eot_loss_gradient(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, draws: int,
                      loss: PerImageLoss | None = None, max_rows: int | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """A per-image loss and its gradient, each the mean over ``draws`` draws of the defense (one
    where nothing is random): the EOT estimate APGD follows (torchattacks' APGD averages the
    gradients of its draws the same way).

    Args:
        x: (N, C, H, W) images in [0, 1]; labels: (N,).
        loss: (logits (N, K), labels (N,)) -> (N,) losses; default the cross-entropy.
    Returns:
        ((N,) the mean loss of each image, (N, C, H, W) the mean gradient of their sum).
    """
    total, grad, used = _eot_backward(model, x, labels, draws, loss or cross_entropy, max_rows)
    return total / used, grad / used


#: (logits (N, K), labels (N,)) -> (N,): a loss per image.
PerImageLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N, K) logits, (N,) labels -> (N,) the cross-entropy of each image (not reduced)."""
    return F.cross_entropy(logits, labels, reduction="none")


def _eot_backward(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, draws: int, loss: PerImageLoss,
                  max_rows: int | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(the (N,) loss summed over draws, the gradient of that sum at ``x``, the draws taken). The
    deterministic prefix runs forward and backward once; the draws go through the rest in chunks
    of at most ``max_rows`` rows, their gradients summed at the prefix's output."""
    network, ensemble, autocast = _unwrap(model)
    x = x.detach().requires_grad_(True)
    split = _split_stages(network)
    if split is None:  # not a staged network: the draws one after another
        total, grad = torch.zeros(x.shape[0], device=x.device), torch.zeros_like(x)
        for _ in range(draws):
            per_image = loss(model(x).float(), labels)
            grad += torch.autograd.grad(per_image.sum(), x)[0]
            total += per_image.detach()
        return total, grad, draws
    prefix, suffix = split
    rows = max_rows or EOT_ROWS.get(x.device.type, EOT_ROWS["cpu"])
    per_chunk = max(1, rows // max(1, x.shape[0] * (ensemble.ensemble if ensemble else 1)))
    with _autocast(autocast):
        h = _run(prefix, x)
    if not suffix:  # deterministic: every draw has the same gradient
        draws, per_chunk = 1, 1
    cut = h.detach().requires_grad_(True)
    at_cut, total = torch.zeros_like(cut), torch.zeros(x.shape[0], device=x.device)
    for start in range(0, draws, per_chunk):
        k = min(per_chunk, draws - start)
        with _autocast(autocast):
            logits = _suffix_draws(suffix, cut, k, ensemble)
        per_image = torch.stack([loss(logits[d], labels) for d in range(k)])
        at_cut += torch.autograd.grad(per_image.sum(), cut)[0]
        total += per_image.detach().sum(dim=0)
    return total, torch.autograd.grad(h, x, grad_outputs=at_cut)[0], draws


def eot_pgd(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eps: float, alpha: float,
            steps: int, draws: int, random_start: bool = True, norm: str = "linf") -> torch.Tensor:
    """PGD on the EOT gradient, with :func:`eot_gradient`'s batched draws and one draw on a
    deterministic model. L-inf as torchattacks' EOTPGD (uniform random start in the ball, signed
    steps of ``alpha``, projection); L2 as its PGDL2 (a random start in the ball, steps of ``alpha``
    along the gradient's direction, projection onto the ball).

    Args:
        images: (N, C, H, W) in [0, 1]; labels: (N,).
        eps, alpha: the radius and step in image units.
    Returns:
        (N, C, H, W) adversarial images within ``eps`` of ``images`` in ``norm``, in [0, 1].
    """
    draws = eot_draws(model, draws)
    images = images.detach()
    adv = images.clone()
    if random_start:
        adv = (adv + _random_start(adv, eps, norm)).clamp(0, 1)
    for _ in range(steps):
        grad = eot_gradient(model, adv, labels, draws)
        if norm == "linf":
            adv = adv.detach() + alpha * grad.sign()
            delta = (adv - images).clamp(-eps, eps)
        else:
            adv = adv.detach() + alpha * grad / _l2(grad).clamp_min(1e-12)
            delta = adv - images
            delta = delta * (eps / _l2(delta).clamp_min(1e-12)).clamp(max=1.0)
        adv = (images + delta).clamp(0, 1).detach()
    return adv


def _l2(x: torch.Tensor) -> torch.Tensor:
    """Per-image L2 norms, shaped (N, 1, 1, 1) to broadcast."""
    return x.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (x.dim() - 1)))


def _random_start(x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """A random point in the ball (torchattacks' EOTPGD and PGDL2 starts)."""
    if norm == "linf":
        return torch.empty_like(x).uniform_(-eps, eps)
    delta = torch.empty_like(x).normal_()
    radius = torch.zeros(x.shape[0], *([1] * (x.dim() - 1)), device=x.device).uniform_(0, 1)
    return delta / _l2(delta).clamp_min(1e-12) * radius * eps
