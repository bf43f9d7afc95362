"""The attack registry: every attack the project runs, one entry each, built from torchattacks.

Every attack targets the whole defended model (ensemble included) and is scored by one fresh
forward pass of it. An entry says how to build the attack, the metrics it reports and its cost in
gradient passes (or queries) per image and per model pass; :func:`smoothblock.evaluation.evaluate`,
``smoothblock evaluate``, the search's ``attacks:`` suite and the audit read this table, so adding
an attack is one :func:`register` call. One module per family (``fgsm``, ``pgd``, ``apgd``,
``square``, ``cw``); the registry's order, below, is the order of ``smoothblock evaluate``'s columns.

* ``fgsm``: FGSM (Goodfellow et al. 2015) at each of ``fgsm_eps`` (in 1/255).
* ``transfer_fgsm``, ``eot_fgsm``: the same eps, crafted with the defense switched off (as
  ``transfer``) or on the gradient averaged over ``eot_iter`` draws (as ``eot_pgd``): the adaptive
  FGSM, whose per-eps worst case with ``fgsm`` is ``worst_fgsm_<eps>_acc``.
* ``pgd``: PGD (Madry et al. 2018), L-inf eps 8/255, alpha 2/255, 7 steps, random start (thesis).

Every attack with a radius (PGD, transfer, EOT-PGD, APGD, AA-rand, Square) stays in the settings'
threat model: ``norm`` linf (default, 8/255) or l2 (0.5 by default, RobustBench's second setting);
the FGSM family is L-inf only and is refused under l2.
* ``eot_pgd``: PGD whose gradient is averaged over ``eot_iter`` draws of the defense's randomness
  (Athalye et al. 2018), ``eot_steps`` steps. Every EOT attack draws once from a model with nothing
  random at test time, and batches its draws (:mod:`smoothblock.attacks.eot`).
* ``apgd``: APGD-CE (Croce & Hein 2020) with ``eot_iter`` draws per gradient: torchattacks'
  algorithm with its draws batched (:mod:`smoothblock.attacks.apgd`).
* ``autoattack_rand``: AutoAttack's version for randomised defenses: APGD-CE then APGD-DLR (on the
  images the first left), ``aa_eot_iter`` (20) draws per gradient, ``aa_steps`` (10) steps each.
  APGD here returns its highest-loss iterate for every image (torchattacks' forward returns the
  clean image where no draw was fooled during the run, which wastes the attack on a random model).
* ``square``: Square (Andriushchenko et al. 2020), black-box, ``square_queries`` queries.
* ``transfer``: PGD with ``transfer_steps`` steps crafted on the same weights with every
  SmoothBlock/DropBlock switched off (the identity in their place: BPDA with the identity as the
  layer's approximation, Athalye et al. 2018), then scored on the defended model. It ignores the
  randomness instead of following it, so noisy gradients cannot hide from it.
* ``unbounded``: PGD at eps = 1 (the whole image range). A working attack must then leave ~0%;
  a sanity check of the other attacks (Pintor et al. 2022), not a threat model.
* ``cw``: targeted C&W L2 with ART 0.4's defaults (the thesis' Table 4.1); reports its success rate
  ``cw_asr`` beside its accuracy.

All metrics are fractions in [0, 1].
"""
from __future__ import annotations

from . import apgd as _apgd, cw as _cw, fgsm as _fgsm, pgd as _pgd, square as _square
from .base import (ATTACKS, Attack, Crafter, defense_off, get_attack, metric_name, metric_names, predict, random_targets,
                   register, worst_fgsm_metric)
from .settings import FGSM_EPS, NORM_NAMES, NORMS, AttackSettings

for _attack in (_fgsm.FGSM, _fgsm.TRANSFER_FGSM, _fgsm.EOT_FGSM, _fgsm.FFGSM, _pgd.PGD, _pgd.TRANSFER, _pgd.EOT_PGD,
                _apgd.APGD, _apgd.AUTOATTACK_RAND, _square.SQUARE, _pgd.UNBOUNDED, _cw.CW, _pgd.EOT_PGD_X2):
    register(_attack)

__all__ = ["ATTACKS", "Attack", "AttackSettings", "Crafter", "FGSM_EPS", "NORMS", "NORM_NAMES", "defense_off",
           "get_attack", "metric_name", "metric_names", "predict", "random_targets", "register",
           "worst_fgsm_metric"]
