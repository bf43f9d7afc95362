"""How sure a comparison of two models on the same images is: paired intervals of their difference.

A defense and its base are scored on the same images, attacks and seeds, so their per-image
outcomes are paired: what decides the difference is the discordant images (right with one, wrong
with the other), not the two accuracies apart. The interval is Newcombe's hybrid score interval
for a difference of paired proportions (Newcombe 1998, "Improved confidence intervals for the
difference between binomial proportions based on paired data", method 10), chosen over

* an exact McNemar (conditional binomial) interval: it conditions on the number of discordant
  images, so with none it says [0, 0] on any number of images, which overstates what few images
  can tell;
* a paired bootstrap: random, and degenerate in the same way when no image is discordant;
* the Wald interval: it undercovers near 0 and 1, where robust accuracies of post-hoc defenses
  live.

It is closed-form, deterministic, and keeps close to its nominal coverage for small samples and
proportions near the bounds (Newcombe's simulations; ``tests/test_stats.py`` checks its coverage).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


@dataclass(frozen=True)
class PairedDifference:
    """``estimate`` = accuracy of A minus accuracy of B on the same ``images``, with its 95%
    interval [``low``, ``high``]; ``a_only`` / ``b_only``: the discordant images (right with one only)."""

    estimate: float
    low: float
    high: float
    images: int
    a_only: int
    b_only: int

    @property
    def distinguishable(self) -> bool:
        """Whether the interval excludes zero."""
        return self.low > 0 or self.high < 0

    def metrics(self, name: str) -> dict[str, float]:
        """The estimate and its interval as flat metrics: ``name``, ``name_low``, ``name_high``."""
        return dict(zip(interval_names(name), (self.estimate, self.low, self.high)))


def interval_names(name: str) -> tuple[str, str, str]:
    """The one place an interval's metrics are named: (``name``, ``name_low``, ``name_high``)."""
    return name, f"{name}_low", f"{name}_high"


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a binomial proportion (``successes`` of ``n``)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference(a: torch.Tensor, b: torch.Tensor, z: float = Z95) -> PairedDifference:
    """Accuracy of A minus accuracy of B with Newcombe's paired interval (the module's docstring).

    Args:
        a, b: (N,) bool, whether each of the same N images is right under A and under B.
    """
    a, b = a.bool().flatten(), b.bool().flatten()
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes need the same images: {a.numel()} and {b.numel()}")
    n = a.numel()
    both, a_only = int((a & b).sum()), int((a & ~b).sum())
    b_only, neither = int((~a & b).sum()), int((~a & ~b).sum())
    if n == 0:
        return PairedDifference(0.0, -1.0, 1.0, 0, 0, 0)
    p1, p2 = (both + a_only) / n, (both + b_only) / n
    l1, u1 = wilson(both + a_only, n, z)
    l2, u2 = wilson(both + b_only, n, z)
    margins = (both + a_only) * (b_only + neither) * (both + b_only) * (a_only + neither)
    # Newcombe's correction of the phi coefficient (as Altman et al. 2000, "Statistics with
    # confidence", p. 52 give it): a positive association is shrunk by n / 2, none below that.
    association = both * neither - a_only * b_only
    corrected = association - n / 2 if association > n / 2 else min(association, 0)
    phi = corrected / math.sqrt(margins) if margins else 0.0
    diff = (a_only - b_only) / n  # p1 - p2, exact where the discordant counts are equal
    below = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    above = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return PairedDifference(diff, max(-1.0, diff - below), min(1.0, diff + above), n, a_only, b_only)
