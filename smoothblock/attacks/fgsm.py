"""The FGSM family (Goodfellow et al. 2015), L-inf only, one metric per ``fgsm_eps`` (in 1/255):
``fgsm`` (torchattacks' FGSM), ``transfer_fgsm`` (crafted with the defense switched off) and
``eot_fgsm`` (on the gradient averaged over ``eot_iter`` draws): the adaptive FGSM, whose per-eps
worst case with ``fgsm`` is ``worst_fgsm_<eps>_acc``. And ``ffgsm``: FGSM from a uniform random
start in the ball, one step of ``ffgsm_alpha`` (Wong et al. 2020's "fast" adversarial training)."""
from __future__ import annotations

import contextlib

import torch
import torchattacks
from torch import nn

from .base import Attack, Crafter, defense_off, metric_name
from .eot import eot_draws, eot_gradient
from .settings import AttackSettings


def _fgsm_family(model: nn.Module, s: AttackSettings, name: str, draws: int, off: bool) -> dict[str, Crafter]:
    """FGSM at each eps from one gradient at the clean image: the sum of ``draws`` draws' gradients
    (EOT, batched; one draw where nothing is random), with every random layer switched off when
    ``off`` (transfer). FGSM has no random start,
    so the gradient is the same for every eps: it is computed once per batch and reused."""
    cache: dict[str, torch.Tensor] = {}

    def gradient(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if cache and cache["x"].shape == images.shape and torch.equal(cache["x"], images) \
                and torch.equal(cache["y"], labels):
            return cache["g"]
        with defense_off(model) if off else contextlib.nullcontext():
            total = eot_gradient(model, images, labels, eot_draws(model, draws))
        cache.update(x=images.clone(), y=labels.clone(), g=total)
        return total

    def crafter(eps: float) -> Crafter:
        return lambda images, labels: (images + eps * gradient(images, labels).sign()).clamp(0, 1).detach()
    return {metric_name(name, eps=e): crafter(e / 255) for e in s.fgsm_eps}


FGSM = Attack(
    "fgsm", "FGSM at each fgsm_eps (1/255)", "FGSM", cheap=True, per_eps=True, norms=("linf",),
    build=lambda m, s, k, seed: {metric_name("fgsm", eps=e): torchattacks.FGSM(m, eps=e / 255) for e in s.fgsm_eps},
    cost=lambda s: len(s.fgsm_eps))
TRANSFER_FGSM = Attack(
    "transfer_fgsm", "FGSM at each fgsm_eps crafted with the defense switched off", "transfer FGSM",
    kind="transfer", cheap=True, per_eps=True, norms=("linf",),
    build=lambda m, s, k, seed: _fgsm_family(m, s, "transfer_fgsm", draws=1, off=True),
    cost=lambda s: 1)
FFGSM = Attack(
    "ffgsm", "FGSM from a random start in the ball, one step of ffgsm_alpha (Wong et al. 2020)", "FFGSM",
    cheap=True, norms=("linf",),
    build=lambda m, s, k, seed: {metric_name("ffgsm"): torchattacks.FFGSM(m, eps=s.radius, alpha=s.ffgsm_alpha)},
    cost=lambda s: 1)
EOT_FGSM = Attack(
    # One step of eps on the sign of the gradient averaged over eot_iter draws: EOT-FGSM.
    "eot_fgsm", "FGSM at each fgsm_eps on the gradient averaged over eot_iter draws", "EOT-FGSM",
    cheap=True, per_eps=True, norms=("linf",),
    build=lambda m, s, k, seed: _fgsm_family(m, s, "eot_fgsm", draws=s.eot_iter, off=False),
    cost=lambda s: s.eot_iter)
