"""The attack registry: every attack the project runs, one entry each, built from torchattacks.

Every attack targets the whole defended model (ensemble included) and is scored by one fresh
forward pass of it. An entry says how to build the attack, the metrics it reports and its cost in
gradient passes (or queries) per image and per model pass; :func:`smoothblock.evaluation.evaluate`,
``smoothblock evaluate``, the search's ``attacks:`` suite and the audit read this table, so adding
an attack is one :func:`register` call.

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
  random at test time, and batches its draws (:mod:`smoothblock.eot`).
* ``apgd``: APGD-CE (Croce & Hein 2020) with ``eot_iter`` draws per gradient: torchattacks'
  algorithm with its draws batched (:mod:`smoothblock.apgd`).
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

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torchattacks
from torch import nn

from .cw import cw_l2_targeted, predict, random_targets
from .apgd import apgd
from .eot import eot_draws, eot_gradient, eot_pgd
from .layers import RandomBlockLayer

FGSM_EPS = (1, 2, 4, 8, 16, 32)

__all__ = ["ATTACKS", "Attack", "AttackSettings", "attack_names", "defense_off", "get_attack", "metric_names",
           "predict", "random_targets", "register"]


def _setting(default, help: str, parse=None, choices=None):
    """A field with its ``--flag`` help, the type its flag parses (the default's unless given) and
    the values it takes (None: any)."""
    return field(default=default, metadata={"help": help, "type": parse or type(default), "choices": choices})


#: The threat models: the norm of the ball every attack with a radius stays in, and its default
#: radius in the unit ``eps`` is given in (L-inf in 1/255 of the image range, L2 as a float).
NORMS = {"linf": 8.0, "l2": 0.5}
NORM_NAMES = {"linf": "Linf", "l2": "L2"}  # torchattacks' names


@dataclass(frozen=True)
class AttackSettings:
    """Parameters of every attack; the PGD, FGSM and C&W defaults are the thesis' (Section 4).
    Each field's ``help`` is its ``smoothblock evaluate --<field>`` help."""

    fgsm_eps: tuple[int, ...] = _setting(FGSM_EPS, "FGSM's eps, in 1/255")
    norm: str = _setting("linf", "the threat model: linf or l2, the ball of PGD, transfer, EOT-PGD, APGD, "
                                 "AA-rand and Square (FGSM has no L2 form)", choices=("linf", "l2"))
    eps: float | None = _setting(None, "the ball's radius: L-inf in 1/255 (default 8), L2 as a float (default 0.5, "
                                       "RobustBench's)", parse=float)
    pgd_alpha: float = _setting(2 / 255, "L-inf step size of PGD, transfer and EOT-PGD (L2: a quarter of eps)")
    pgd_steps: int = _setting(7, "steps of the thesis' PGD")
    # On the main command's best post-hoc defense, robust_acc on 500 validation images was 3.4%
    # with 16 draws, 2.6% with 32, 2.4% with 64 (docs/results.md).
    eot_iter: int = _setting(32, "draws of the defense averaged in each EOT gradient (eot_pgd, apgd, eot_fgsm)")
    eot_steps: int = _setting(20, "steps of EOT-PGD")
    apgd_steps: int = _setting(20, "steps of APGD-CE")
    # torchattacks' defaults; the original AutoAttack runs 100 steps. A row that is deterministic
    # at test time needs one draw.
    aa_steps: int = _setting(10, "steps of each of AutoAttack-rand's APGD-CE and APGD-DLR")
    aa_eot_iter: int = _setting(20, "draws per gradient in AutoAttack-rand")
    square_queries: int = _setting(1000, "queries of the Square attack")
    transfer_steps: int = _setting(20, "steps of the transfer PGD (crafted with the defense off)")
    unbounded_steps: int = _setting(20, "steps of the eps-1 PGD check")
    cw_search_steps: int = _setting(10, "C&W's binary-search steps over c (ART 0.4's default)")
    cw_steps: int = _setting(10, "C&W's optimisation steps per c (ART 0.4's default)")
    cw_lr: float = _setting(0.01, "C&W's learning rate (ART 0.4's default)")
    cw_initial_c: float = _setting(0.01, "C&W's first c (ART 0.4's default)")
    cw_kappa: float = _setting(0.0, "C&W's confidence margin (ART 0.4's default)")
    cw_images: int = _setting(1000, "C&W runs on the first this many images only, as in the thesis")
    # The EOT attacks cost tens of passes per image and step.
    eot_images: int = _setting(1000, "eot_pgd, apgd, autoattack_rand and Square run on the first this many images only")
    unbounded_images: int = _setting(200, "the eps-1 check runs on the first this many images (few tell ~0% from 5%)")


    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.eps is not None and self.eps <= 0:
            raise ValueError(f"eps must be positive, got {self.eps}")

    @property
    def radius(self) -> float:
        """The ball's radius in image units ([0, 1]): ``eps`` / 255 for L-inf, ``eps`` for L2."""
        eps = NORMS[self.norm] if self.eps is None else self.eps
        return eps / 255 if self.norm == "linf" else eps

    @property
    def step(self) -> float:
        """PGD's step in image units: ``pgd_alpha`` for L-inf, a quarter of the radius for L2."""
        return self.pgd_alpha if self.norm == "linf" else self.radius / 4

    @property
    def threat_model(self) -> str:
        """``L-inf 8/255`` or ``L2 0.5``: how a report names the ball."""
        eps = NORMS[self.norm] if self.eps is None else self.eps
        return f"L-inf {eps:g}/255" if self.norm == "linf" else f"L2 {eps:g}"


Crafter = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Attack:
    """One registry entry.

    Attributes:
        name: the name everywhere (CLI ``--attacks``, YAML ``attacks:``, metric ``<name>_acc``).
        summary: one line for ``--help``.
        title: its column in ``smoothblock evaluate``'s table.
        build: ``(model, settings, num_classes, seed) -> {metric: crafter}``; a crafter maps images
            (N, C, H, W) in [0, 1] and labels (N,) (targets for a targeted attack) to adversarial
            images (N, C, H, W). One metric per crafter (FGSM: one per eps).
        cost: gradient passes (queries for black-box attacks) per image and model pass.
        kind: ``white`` (follows the defended model's gradient), ``transfer`` or ``black``.
        limit: the :class:`AttackSettings` field capping how many images it runs on, or None.
        targeted: crafters take target classes instead of labels (C&W); ``<name>_asr`` is reported.
        norms: the threat models it has a form for (``settings.norm`` must be one).
        per_eps: one crafter and metric per ``fgsm_eps`` (``<name>_<eps>_acc``), and
            :func:`smoothblock.evaluation.evaluate` reports the per-image worst case over the per-eps
            attacks at each eps (``worst_fgsm_<eps>_acc``).
        cheap: in a worst-case cascade (see :func:`smoothblock.evaluation.evaluate`) it still runs on
            every image, so its own accuracy is known; expensive attacks run on the survivors only.
    """

    name: str
    summary: str
    title: str
    build: Callable[[nn.Module, AttackSettings, int, int], dict[str, Crafter]]
    cost: Callable[[AttackSettings], int]
    kind: str = "white"
    limit: str | None = None
    targeted: bool = False
    cheap: bool = False
    per_eps: bool = False
    norms: tuple[str, ...] = ("linf", "l2")

    def check_norm(self, settings: AttackSettings) -> None:
        """Refuse, in one line naming the attack, a threat model it has no form for."""
        if settings.norm not in self.norms:
            raise ValueError(f"attack {self.name} has no {settings.norm} form (it is {', '.join(self.norms)} only); "
                             f"drop it from the attacks or use norm {self.norms[0]}")

    def metrics(self, settings: AttackSettings) -> list[str]:
        """The accuracy metrics the attack reports (without building it)."""
        if self.per_eps:
            return [f"{self.name}_{e}_acc" for e in settings.fgsm_eps]
        return [f"{self.name}_acc"]


ATTACKS: dict[str, Attack] = {}


def register(attack: Attack) -> Attack:
    """Add ``attack`` to the registry (its name must be new)."""
    if attack.name in ATTACKS:
        raise ValueError(f"attack {attack.name!r} is registered already")
    ATTACKS[attack.name] = attack
    return attack


def get_attack(name: str) -> Attack:
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}")
    return ATTACKS[name]


def attack_names() -> tuple[str, ...]:
    return tuple(ATTACKS)


def metric_names(attacks: tuple[str, ...], settings: AttackSettings = AttackSettings()) -> list[str]:
    """Accuracy metrics :func:`smoothblock.evaluation.evaluate` reports for ``attacks`` (standalone)."""
    names = ["clean_acc"]
    for name in attacks:
        attack = get_attack(name)
        names += attack.metrics(settings)
        if attack.targeted:
            names.append(f"{name}_asr")
    return names


@contextlib.contextmanager
def defense_off(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every SmoothBlock/DropBlock/mixed layer of ``model`` is the identity.

    A self-ensemble of a model without active random layers makes one deterministic pass, so the
    whole defended model becomes the undefended network with the same weights.
    """
    layers = [m for m in model.modules() if isinstance(m, RandomBlockLayer)]
    saved = [(m.active_in_train, m.active_in_eval) for m in layers]
    try:
        for m in layers:
            m.active_in_train = m.active_in_eval = False
        yield model
    finally:
        for m, (train, evaluate) in zip(layers, saved):
            m.active_in_train, m.active_in_eval = train, evaluate


def _pgd(model: nn.Module, s: AttackSettings, *, steps: int) -> Crafter:
    """PGD in the settings' ball, random start: torchattacks' PGD (L-inf, the thesis' attack) or
    :func:`smoothblock.eot.eot_pgd` with one draw (L2: torchattacks' PGDL2 reshapes the gradient
    with ``view``, which a channels_last network's input gradient does not allow)."""
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
    """EOT-PGD (:func:`smoothblock.eot.eot_pgd`: torchattacks' EOTPGD, its draws batched)."""
    return lambda images, labels: eot_pgd(model, images, labels, eps=s.radius, alpha=s.step, steps=s.eot_steps,
                                          draws=draws, norm=s.norm)


def _apgd(model: nn.Module, s: AttackSettings) -> Crafter:
    """APGD-CE (:func:`smoothblock.apgd.apgd`: torchattacks' APGD, its draws batched), returning
    each image's highest-loss iterate: torchattacks' forward returns the clean image of every image
    no single draw misclassified during the run, which a fresh draw then scores as robust."""
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
    return {f"{name}_{e}_acc": crafter(e / 255) for e in s.fgsm_eps}


register(Attack(
    "fgsm", "FGSM at each fgsm_eps (1/255)", "FGSM", cheap=True, per_eps=True, norms=("linf",),
    build=lambda m, s, k, seed: {f"fgsm_{e}_acc": torchattacks.FGSM(m, eps=e / 255) for e in s.fgsm_eps},
    cost=lambda s: len(s.fgsm_eps)))
register(Attack(
    "transfer_fgsm", "FGSM at each fgsm_eps crafted with the defense switched off", "transfer FGSM",
    kind="transfer", cheap=True, per_eps=True, norms=("linf",),
    build=lambda m, s, k, seed: _fgsm_family(m, s, "transfer_fgsm", draws=1, off=True),
    cost=lambda s: 1))
register(Attack(
    # One step of eps on the sign of the gradient averaged over eot_iter draws: EOT-FGSM.
    "eot_fgsm", "FGSM at each fgsm_eps on the gradient averaged over eot_iter draws", "EOT-FGSM",
    cheap=True, per_eps=True, norms=("linf",),
    build=lambda m, s, k, seed: _fgsm_family(m, s, "eot_fgsm", draws=s.eot_iter, off=False),
    cost=lambda s: s.eot_iter))
register(Attack(
    "pgd", "PGD in the norm's ball, pgd_steps steps, random start", "PGD", cheap=True,
    build=lambda m, s, k, seed: {"pgd_acc": _pgd(m, s, steps=s.pgd_steps)},
    cost=lambda s: s.pgd_steps))
register(Attack(
    "transfer", "PGD crafted with the defense switched off, scored on the defended model", "transfer",
    kind="transfer", cheap=True, build=lambda m, s, k, seed: {"transfer_acc": _transfer(m, s)},
    cost=lambda s: s.transfer_steps))
register(Attack(
    "eot_pgd", "PGD on the gradient averaged over eot_iter draws, eot_steps steps", "EOT-PGD", limit="eot_images",
    build=lambda m, s, k, seed: {"eot_pgd_acc": _eot_pgd(m, s, s.eot_iter)},
    cost=lambda s: s.eot_steps * s.eot_iter))
register(Attack(
    "apgd", "APGD-CE, apgd_steps steps, eot_iter draws per gradient", "APGD", limit="eot_images",
    build=lambda m, s, k, seed: {"apgd_acc": _apgd(m, s)},
    cost=lambda s: s.apgd_steps * s.eot_iter))
register(Attack(
    "autoattack_rand", "AutoAttack version rand: APGD-CE, then APGD-DLR, aa_steps steps of aa_eot_iter draws",
    "AA-rand", limit="eot_images",
    build=lambda m, s, k, seed: {"autoattack_rand_acc": _autoattack_rand(m, s)},
    cost=lambda s: 2 * s.aa_steps * s.aa_eot_iter))
register(Attack(
    "square", "Square, black-box, square_queries queries", "Square", kind="black", limit="eot_images",
    build=lambda m, s, k, seed: {"square_acc": torchattacks.Square(
        m, norm=NORM_NAMES[s.norm], eps=s.radius, n_queries=s.square_queries, n_restarts=1, seed=seed)},
    cost=lambda s: s.square_queries))
register(Attack(
    "unbounded", "PGD at eps 1 (a sanity check: a working attack leaves ~0%)", "eps 1", limit="unbounded_images",
    build=lambda m, s, k, seed: {"unbounded_acc": torchattacks.PGD(m, eps=1.0, alpha=2.5 / s.unbounded_steps,
                                                                   steps=s.unbounded_steps, random_start=False)},
    cost=lambda s: s.unbounded_steps))
register(Attack(
    "cw", "targeted C&W L2, ART 0.4's defaults (thesis Table 4.1)", "C&W", limit="cw_images", targeted=True,
    build=lambda m, s, k, seed: {"cw_acc": lambda images, targets: cw_l2_targeted(m, images, targets, s)},
    cost=lambda s: s.cw_search_steps * s.cw_steps))
register(Attack(
    "eot_pgd_x2", "eot_pgd with twice eot_iter draws (the audit's check that EOT has converged)", "EOT-PGD x2",
    limit="eot_images",
    build=lambda m, s, k, seed: {"eot_pgd_x2_acc": _eot_pgd(m, s, 2 * s.eot_iter)},
    cost=lambda s: 2 * s.eot_steps * s.eot_iter))
