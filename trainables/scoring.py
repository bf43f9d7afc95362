"""How a trial is scored: what it reads of the search's configuration, the one number the
scheduler ranks by, and the size of its attack batches."""
from __future__ import annotations

from typing import Protocol

import torch

from smoothblock import Config
from smoothblock.attacks import AttackSettings


class Scoring(Protocol):
    """What a trial reads from the search's configuration (``search.config.SearchConfig`` is one;
    trainables do not import the search package above them)."""

    model: str | None
    attacks: tuple[str, ...]
    val_images: int
    chunk_images: int
    audit_images: int
    search_seed: int
    attack_rows: int | None
    attack_bf16: bool

    @property
    def metric(self) -> str: ...

    @property
    def chunks(self) -> int: ...

    def attack_settings(self) -> AttackSettings: ...


SCHEDULER_METRIC = "asha_score"

#: Rows (images x ensemble passes) an attack batch holds by default: on a CPU, small batches stay in
#: its caches (a 4-pass trial at position 1 ran 10% faster at 200 rows than at 400, with less activation
#: memory: 0.55 of it); a GPU wants all of a trial's images at once.
ATTACK_ROWS = {"cpu": 200, "cuda": 8192}


def attack_batch(cfg: Config, rows: int | None, device: torch.device) -> int:
    """Images per attack batch for ``cfg``'s defended model: ``rows`` (or the device's default)
    divided by its passes, so an ensemble's autograd graph stays the same size as one pass's."""
    rows = rows or ATTACK_ROWS.get(device.type, ATTACK_ROWS["cpu"])
    return max(1, rows // cfg.passes)


def asha_score(metrics: dict[str, float]) -> float:
    """``robust_acc`` with ``clean_acc`` / 1000 added: the ranking's order (robust, then clean) as
    one number for the scheduler. Most post-hoc defenses leave ~0% to an adaptive attacker, and
    ASHA stops a trial only when it is strictly below the rung's cutoff: on a tie at 0 it would stop none."""
    return metrics["robust_acc"] + metrics["clean_acc"] / 1000
