"""APGD (Croce & Hein 2020) on the batched EOT gradient of :mod:`smoothblock.attacks.eot`.

torchattacks' APGD (a port of AutoAttack's) computes each of its ``eot_iter`` draws as a full
forward and backward pass, one after another. This is the same algorithm, step for step (the
start, the momentum step, the projections, the step-size halving at the checkpoints of the
oscillation test), with one change of how, not what: the loss and gradient of every step come
from :func:`smoothblock.attacks.eot.eot_loss_gradient`, so the draws go through the model as one batch
behind a deterministic prefix computed once, and a model with nothing random gets one draw. On a
deterministic model it gives torchattacks' iterates (``tests/test_apgd.py``).

One choice differs where torchattacks is arbitrary: the loss that picks each image's best iterate
and drives the step-size test is the mean over the draws, where torchattacks keeps the last
draw's. The adversarial example is then the iterate that fools the defense on average, which is
what a fresh draw scores; with one draw the two are the same.

The registry's ``apgd`` (APGD-CE) and ``autoattack_rand`` (AutoAttack's version for randomised
defenses: APGD-CE, then APGD-DLR on the images the first left) are built here.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .base import Attack, Crafter, metric_name, predict
from .eot import PerImageLoss, cross_entropy, eot_draws, eot_loss_gradient
from .settings import AttackSettings


def dlr_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The difference-of-logits-ratio loss (Croce & Hein 2020, as torchattacks computes it):
    (N, K >= 3) logits, (N,) labels -> (N,) losses, scale-invariant in the logits."""
    ordered, order = logits.sort(dim=1)
    top_is_label = (order[:, -1] == labels).float()
    own = logits[torch.arange(logits.shape[0]), labels]
    other = ordered[:, -2] * top_is_label + ordered[:, -1] * (1.0 - top_is_label)
    return -(own - other) / (ordered[:, -1] - ordered[:, -3] + 1e-12)


#: APGD's losses by name.
LOSSES: dict[str, PerImageLoss] = {"ce": cross_entropy, "dlr": dlr_loss}


def apgd(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eps: float, steps: int,
         norm: str = "linf", loss: str = "ce", draws: int = 1, rho: float = 0.75) -> torch.Tensor:
    """One run of APGD from a random start; each image's highest-loss iterate.

    Args:
        model: the whole defended model, attacked as it is (its random layers draw at every pass).
        images: (N, C, H, W) in [0, 1]; labels: (N,).
        eps: the radius in image units, in ``norm`` (``linf`` or ``l2``).
        steps: iterations; loss: ``ce`` or ``dlr``; draws: EOT draws per gradient (one on a
            deterministic model); rho: the oscillation test's threshold (AutoAttack's 0.75).
    Returns:
        (N, C, H, W) the iterate of highest mean loss of each image, within ``eps`` in [0, 1].
        The random start draws from torch's global generator: seed it to repeat a run.
    """
    criterion, draws = LOSSES[loss], eot_draws(model, draws)
    x, n = images.detach(), images.shape[0]
    steps_2, steps_min, size_decr = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    x_adv = _start(x, eps, norm)
    loss_now, grad = eot_loss_gradient(model, x_adv, labels, draws, criterion)
    x_best, grad_best, loss_best = x_adv.clone(), grad.clone(), loss_now.clone()
    loss_steps = torch.zeros(steps, n)
    step_size = torch.full((n, 1, 1, 1), 2.0 * eps, device=x.device)
    x_old, k, since_check = x_adv.clone(), steps_2, 0
    last_check = loss_best.clone()
    reduced = np.ones(n, dtype=bool)
    for i in range(steps):
        with torch.no_grad():
            momentum = x_adv - x_old
            x_old = x_adv.clone()
            x_adv = _step(x, x_adv, grad, momentum, step_size, 0.75 if i > 0 else 1.0, eps, norm)
        loss_now, grad = eot_loss_gradient(model, x_adv, labels, draws, criterion)
        loss_steps[i] = loss_now.cpu()
        better = loss_now > loss_best
        x_best[better], grad_best[better], loss_best[better] = x_adv[better], grad[better], loss_now[better]
        since_check += 1
        if since_check == k:
            # Halve the step of an image whose loss oscillates, or that did not improve since the
            # last check without a halving then; it goes on from its best iterate.
            halve = _oscillates(loss_steps.numpy(), i, k, rho)
            halve |= ~reduced & (last_check.cpu().numpy() >= loss_best.cpu().numpy())
            reduced, last_check = halve.copy(), loss_best.clone()
            if halve.any():
                rows = torch.from_numpy(halve).to(x.device)
                step_size[rows] /= 2.0
                x_adv[rows], grad[rows] = x_best[rows].clone(), grad_best[rows].clone()
            since_check, k = 0, max(k - size_decr, steps_min)
    return x_best.detach()


def _start(x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """AutoAttack's start: a random point on the ball's surface (L-inf: scaled to max-abs eps)."""
    n = x.shape[0]
    if norm == "linf":
        t = 2 * torch.rand(x.shape).to(x.device) - 1
        start = x + eps * t / t.reshape(n, -1).abs().max(dim=1, keepdim=True)[0].reshape(-1, 1, 1, 1)
    else:
        t = torch.randn(x.shape).to(x.device)
        start = x + eps * t / (_l2(t) + 1e-12)
    return start.clamp(0.0, 1.0)


def _step(x: torch.Tensor, x_adv: torch.Tensor, grad: torch.Tensor, momentum: torch.Tensor,
          step_size: torch.Tensor, a: float, eps: float, norm: str) -> torch.Tensor:
    """A gradient step of ``step_size``, projected, then momentum (weight ``1 - a``), projected."""
    if norm == "linf":
        z = x_adv + step_size * torch.sign(grad)
        z = torch.clamp(torch.min(torch.max(z, x - eps), x + eps), 0.0, 1.0)
        z = x_adv + (z - x_adv) * a + momentum * (1 - a)
        return torch.clamp(torch.min(torch.max(z, x - eps), x + eps), 0.0, 1.0)
    z = x_adv + step_size * grad / (_l2(grad) + 1e-12)
    d = z - x
    z = torch.clamp(x + d / (_l2(d) + 1e-12) * _l2(d).clamp(max=eps), 0.0, 1.0)
    z = x_adv + (z - x_adv) * a + momentum * (1 - a)
    d = z - x
    return torch.clamp(x + d / (_l2(d) + 1e-12) * (_l2(d) + 1e-12).clamp(max=eps), 0.0, 1.0)


def _oscillates(loss_steps: np.ndarray, j: int, k: int, rho: float) -> np.ndarray:
    """(N,) whether the loss rose in at most ``rho`` of the last ``k`` steps (AutoAttack's test;
    at the first check its window reaches one row before the first, as AutoAttack's does)."""
    rises = np.zeros(loss_steps.shape[1])
    for back in range(k):
        rises += loss_steps[j - back] > loss_steps[j - back - 1]
    return rises <= k * rho


def _l2(t: torch.Tensor) -> torch.Tensor:
    """Per-image L2 norms, (N, 1, 1, 1)."""
    return (t ** 2).sum(dim=(1, 2, 3), keepdim=True).sqrt()


def _apgd(model: nn.Module, s: AttackSettings) -> Crafter:
    """APGD-CE, returning each image's highest-loss iterate: torchattacks' forward returns the
    clean image of every image no single draw misclassified during the run, which a fresh draw then
    scores as robust."""
    return lambda images, labels: apgd(model, images, labels, eps=s.radius, steps=s.apgd_steps, norm=s.norm,
                                       loss="ce", draws=s.eot_iter)


def _autoattack_rand(model: nn.Module, s: AttackSettings) -> Crafter:
    """AutoAttack's version for randomised defenses (Croce & Hein 2020): APGD-CE, then APGD-DLR on
    the images the first left, each with ``aa_eot_iter`` draws per gradient."""
    def run(images: torch.Tensor, labels: torch.Tensor, loss: str) -> torch.Tensor:
        return apgd(model, images, labels, eps=s.radius, steps=s.aa_steps, norm=s.norm, loss=loss,
                    draws=s.aa_eot_iter)

    def craft(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        adv = run(images, labels, "ce")
        left = predict(model, adv) == labels
        if left.any():
            adv[left] = run(images[left], labels[left], "dlr")
        return adv
    return craft


APGD = Attack(
    "apgd", "APGD-CE, apgd_steps steps, eot_iter draws per gradient", "APGD", limit="eot_images",
    build=lambda m, s, k, seed: {metric_name("apgd"): _apgd(m, s)},
    cost=lambda s: s.apgd_steps * s.eot_iter)
AUTOATTACK_RAND = Attack(
    "autoattack_rand", "AutoAttack version rand: APGD-CE, then APGD-DLR, aa_steps steps of aa_eot_iter draws",
    "AA-rand", limit="eot_images",
    build=lambda m, s, k, seed: {metric_name("autoattack_rand"): _autoattack_rand(m, s)},
    cost=lambda s: 2 * s.aa_steps * s.aa_eot_iter)
