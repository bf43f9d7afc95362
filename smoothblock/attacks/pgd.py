"""The PGD family (Madry et al. 2018), in the settings' ball with a random start: ``pgd`` (the
thesis' attack), ``transfer`` (crafted with every random layer switched off: BPDA with the
identity as the layer's approximation, Athalye et al. 2018), ``eot_pgd`` and ``eot_pgd_x2`` (on the
gradient averaged over draws of the defense) and ``unbounded`` (eps 1: the sanity check that a
working attack leaves ~0%, Pintor et al. 2022)."""
from __future__ import annotations

import torch
import torchattacks
from torch import nn

from .base import Attack, Crafter, defense_off, metric_name
from .eot import eot_pgd
from .settings import AttackSettings


def _pgd(model: nn.Module, s: AttackSettings, *, steps: int) -> Crafter:
    """PGD in the settings' ball, random start: torchattacks' PGD (L-inf, the thesis' attack) or
    :func:`smoothblock.attacks.eot.eot_pgd` with one draw (L2: torchattacks' PGDL2 reshapes the
    gradient with ``view``, which a channels_last network's input gradient does not allow)."""
    if s.norm == "linf":
        return torchattacks.PGD(model, eps=s.radius, alpha=s.step, steps=steps, random_start=True)
    return lambda images, labels: eot_pgd(model, images, labels, eps=s.radius, alpha=s.step, steps=steps,
                                          draws=1, norm="l2")


def _transfer(model: nn.Module, s: AttackSettings) -> Crafter:
    pgd = _pgd(model, s, steps=s.transfer_steps)

    def craft(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with defense_off(model):
            return pgd(images, labels)
    return craft


def _eot_pgd(model: nn.Module, s: AttackSettings, draws: int) -> Crafter:
    """EOT-PGD (:func:`smoothblock.attacks.eot.eot_pgd`: torchattacks' EOTPGD, its draws batched)."""
    return lambda images, labels: eot_pgd(model, images, labels, eps=s.radius, alpha=s.step, steps=s.eot_steps,
                                          draws=draws, norm=s.norm)


PGD = Attack(
    "pgd", "PGD in the norm's ball, pgd_steps steps, random start", "PGD", cheap=True,
    build=lambda m, s, k, seed: {metric_name("pgd"): _pgd(m, s, steps=s.pgd_steps)},
    cost=lambda s: s.pgd_steps)
TRANSFER = Attack(
    "transfer", "PGD crafted with the defense switched off, scored on the defended model", "transfer",
    kind="transfer", cheap=True, build=lambda m, s, k, seed: {metric_name("transfer"): _transfer(m, s)},
    cost=lambda s: s.transfer_steps)
EOT_PGD = Attack(
    "eot_pgd", "PGD on the gradient averaged over eot_iter draws, eot_steps steps", "EOT-PGD", limit="eot_images",
    build=lambda m, s, k, seed: {metric_name("eot_pgd"): _eot_pgd(m, s, s.eot_iter)},
    cost=lambda s: s.eot_steps * s.eot_iter)
EOT_PGD_X2 = Attack(
    "eot_pgd_x2", "eot_pgd with twice eot_iter draws (the audit's check that EOT has converged)", "EOT-PGD x2",
    limit="eot_images",
    build=lambda m, s, k, seed: {metric_name("eot_pgd_x2"): _eot_pgd(m, s, 2 * s.eot_iter)},
    cost=lambda s: 2 * s.eot_steps * s.eot_iter)
UNBOUNDED = Attack(
    "unbounded", "PGD at eps 1 (a sanity check: a working attack leaves ~0%)", "eps 1", limit="unbounded_images",
    build=lambda m, s, k, seed: {metric_name("unbounded"): torchattacks.PGD(m, eps=1.0, alpha=2.5 / s.unbounded_steps,
                                                                   steps=s.unbounded_steps, random_start=False)},
    cost=lambda s: s.unbounded_steps)
