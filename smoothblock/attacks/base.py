"""The attack registry's parts: an :class:`Attack` entry, the registry itself, and what every
attack shares (scoring by one fresh pass, switching the defense off)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from ..layers import RandomBlockLayer
from .settings import AttackSettings


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Labels from one forward pass of ``model``; (N, C, H, W) -> (N,)."""
    return model(images).argmax(dim=1)


def random_targets(labels: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly drawn wrong class per label, (N,) -> (N,), on the CPU."""
    shift = torch.randint(1, num_classes, labels.shape, generator=generator)
    return (labels.cpu() + shift) % num_classes


def metric_name(attack: str, kind: str = "acc", *, eps: float | None = None) -> str:
    """The one place an attack's metric is named: ``<attack>_acc`` (accuracy under it),
    ``<attack>_<eps>_acc`` (a per-eps attack at ``eps`` in 1/255), ``<attack>_asr`` (a targeted
    attack's success rate) or ``<attack>_broke`` (in a cascade, the images it broke)."""
    return f"{attack}_{eps:g}_{kind}" if eps is not None else f"{attack}_{kind}"


def worst_fgsm_metric(eps: float) -> str:
    """The per-image worst case over the per-eps attacks at ``eps``: ``worst_fgsm_<eps>_acc``."""
    return metric_name("worst_fgsm", eps=eps)


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
            return [metric_name(self.name, eps=e) for e in settings.fgsm_eps]
        return [metric_name(self.name)]


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


def metric_names(attacks: tuple[str, ...], settings: AttackSettings = AttackSettings()) -> list[str]:
    """Accuracy metrics :func:`smoothblock.evaluation.evaluate` reports for ``attacks`` (standalone)."""
    names = ["clean_acc"]
    for name in attacks:
        attack = get_attack(name)
        names += attack.metrics(settings)
        if attack.targeted:
            names.append(metric_name(name, "asr"))
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
