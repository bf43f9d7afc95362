"""An audit of a defense's robust accuracy: stronger attacks and the indicators of a failed attack.

Randomised defenses often look robust because the attacks fail, not because the model resists
them (Athalye et al. 2018). The audit runs the checks of AutoAttack (Croce & Hein 2020) and of
"Indicators of Attack Failure" (Pintor et al. 2022) on one defended model:

* the white-box attacks first (the suite's own, AutoAttack-rand, EOT-PGD with twice the draws),
  then the transfer attack (crafted with the defense off) and the black-box Square, each on the
  images the attacks before it left (a cascade; see :func:`smoothblock.evaluation.evaluate`);
* ``transfer/black-box``: if the transfer and black-box attacks beat the white-box ones by more
  than ``max_transfer_gain`` (a fraction of all images: the images the white-box attacks left
  that they broke), the white-box gradients are useless (masked, noisy or shattered) and the
  white-box figure is not a bound;
* ``unbounded``: PGD at eps = 1 must leave about 0%; more than ``max_unbounded_acc`` robust means
  the gradient attack cannot move the prediction at all;
* ``EOT not converged``: if EOT-PGD with twice the draws lowers the white-box figure by more than
  ``max_eot_gain`` (a fraction of all images), the expectation is not estimated well enough.

Any one of them marks the defense ``obfuscated``. The audited ``robust_acc`` is the per-image
worst case over every attack run (the unbounded check excluded), whatever the verdict.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from pydantic import Field
from torch import nn

from .attacks import AttackSettings, get_attack
from .data import TensorDataset
from .evaluation import evaluate
from .settings import Settings

AUDIT_ATTACKS = ("autoattack_rand", "eot_pgd_x2")
LAST_ATTACKS = ("transfer", "square")
#: Attacks that are checks of the audit (does the attack work? did EOT converge?), not threat
#: models: a search's suite may not hold them.
CHECKS = ("unbounded", "eot_pgd_x2")


class AuditThresholds(Settings):
    """How far an indicator of obfuscated gradients may go before the audit flags the defense."""

    max_transfer_gain: float = Field(0.02, ge=0, description="the most the transfer attack may leave above the "
                                                             "white-box attacks")
    max_unbounded_acc: float = Field(0.05, ge=0, le=1, description="the most the eps-1 PGD may leave")
    max_eot_gain: float = Field(0.01, ge=0, description="the most eot_pgd may leave above eot_pgd_x2")


@dataclass
class AuditResult:
    """``metrics``: the cascade's and the unbounded check's metrics; ``reasons``: one line per
    check that failed (empty: not obfuscated); ``attacks``: the order they ran in."""

    metrics: dict[str, float]
    reasons: list[str] = field(default_factory=list)
    attacks: tuple[str, ...] = ()

    @property
    def obfuscated(self) -> bool:
        return bool(self.reasons)

    @property
    def robust_acc(self) -> float:
        return self.metrics["robust_acc"]


def audit_order(suite: tuple[str, ...]) -> tuple[str, ...]:
    """The white-box attacks of ``suite`` and the audit's own, then transfer and Square."""
    white = [a for a in suite if get_attack(a).kind == "white" and a != "unbounded"]
    white += [a for a in AUDIT_ATTACKS if a not in white]
    return (*white, *LAST_ATTACKS)


def audit(model: nn.Module, dataset: TensorDataset, *, suite: tuple[str, ...], images: int | None = None,
          settings: AttackSettings = AttackSettings(), seed: int = 0, device: str | torch.device = "cpu",
          num_classes: int = 10, thresholds: AuditThresholds = AuditThresholds(),
          precomputed: dict[str, torch.Tensor] | None = None, batch_size: int = 250,
          progress: bool = False, outcomes: dict[str, torch.Tensor] | None = None) -> AuditResult:
    """Audit ``model`` (the whole defended model) on the first ``images`` images of ``dataset``.

    Args:
        suite: the attacks the defense was scored with; they run again here, beside the audit's.
        precomputed, outcomes: as for :func:`smoothblock.evaluation.evaluate` (transfer examples;
            the per-image results of the worst case over every attack but the unbounded check).

    Returns:
        The metrics (``robust_acc``, ``<attack>_broke`` for each attack, ``transfer_acc``, ...,
        ``unbounded_acc``) and the reasons the defense is obfuscated, if any.
    """
    order = audit_order(suite)
    # Every attack gets every image: the audit is on few finalists and decides the winner.
    settings = settings.replace(eot_images=max(settings.eot_images, images if images is not None else len(dataset)))
    common = dict(images=images, settings=settings, seed=seed, device=device, num_classes=num_classes,
                  batch_size=batch_size, progress=progress)
    metrics = evaluate(model, dataset, attacks=order, cascade=True, precomputed=precomputed, outcomes=outcomes,
                       **common)
    unbounded = evaluate(model, dataset, attacks=("unbounded",), **{**common, "images": min(settings.unbounded_images,
                                                                                       metrics["images"])})
    metrics["unbounded_acc"] = unbounded["unbounded_acc"]
    metrics["unbounded_images"] = unbounded["images"]
    reasons = []
    gain = sum(metrics.get(f"{a}_broke", 0.0) for a in LAST_ATTACKS)
    if gain > thresholds.max_transfer_gain:
        reasons.append(f"transfer/black-box attacks beat the white-box ones by {100 * gain:.1f} points "
                       f"(more than {100 * thresholds.max_transfer_gain:g})")
    if metrics["unbounded_acc"] > thresholds.max_unbounded_acc:
        reasons.append(f"PGD at eps 1 leaves {100 * metrics['unbounded_acc']:.1f}% robust (more than "
                       f"{100 * thresholds.max_unbounded_acc:g})")
    eot_gain = metrics.get("eot_pgd_x2_broke", 0.0)
    if eot_gain > thresholds.max_eot_gain:
        reasons.append(f"EOT not converged: twice the draws lowered the figure by {100 * eot_gain:.1f} points "
                       f"(more than {100 * thresholds.max_eot_gain:g})")
    return AuditResult(metrics, reasons, order)
