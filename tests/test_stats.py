"""The paired interval of a defense's gain over its base (smoothblock.stats)."""
from __future__ import annotations

import math

import pytest
import torch

from smoothblock.stats import paired_difference, wilson


def _pairs(both: int, a_only: int, b_only: int, neither: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image outcomes of A and B with the given cells, shuffled (the order must not matter)."""
    a = torch.tensor([1] * both + [1] * a_only + [0] * b_only + [0] * neither, dtype=torch.bool)
    b = torch.tensor([1] * both + [0] * a_only + [1] * b_only + [0] * neither, dtype=torch.bool)
    order = torch.randperm(len(a), generator=torch.Generator().manual_seed(0))
    return a[order], b[order]


def test_wilson_matches_its_closed_form():
    low, high = wilson(0, 500)
    assert low == pytest.approx(0, abs=1e-15) and high == pytest.approx(1.959964 ** 2 / (500 + 1.959964 ** 2), rel=1e-6)
    low, high = wilson(50, 100)
    assert (low, high) == (pytest.approx(0.4038, abs=1e-4), pytest.approx(0.5962, abs=1e-4))


def test_the_interval_of_known_discordant_counts():
    # 36 both, 12 A only, 2 B only, 0 neither: the gain is 10 of 50 images.
    d = paired_difference(*_pairs(36, 12, 2, 0))
    assert (d.estimate, d.images, d.a_only, d.b_only) == (pytest.approx(0.2), 50, 12, 2)
    # By hand: Wilson (0.8, 0.7 of 50) and phi = -24 / sqrt(48 * 2 * 38 * 12).
    l1, u1 = wilson(48, 50)
    l2, u2 = wilson(38, 50)
    phi = -24 / math.sqrt(48 * 2 * 38 * 12)
    below = math.sqrt((0.96 - l1) ** 2 - 2 * phi * (0.96 - l1) * (u2 - 0.76) + (u2 - 0.76) ** 2)
    assert d.low == pytest.approx(0.2 - below) and 0 < d.low < 0.2 < d.high < 0.4
    assert d.distinguishable
    # The same accuracies with the discordant images balanced: no gain, an interval around 0.
    even = paired_difference(*_pairs(31, 7, 7, 5))
    assert even.estimate == pytest.approx(0) and even.low < 0 < even.high and not even.distinguishable
    # Swapping A and B mirrors the interval.
    swapped = paired_difference(*reversed(_pairs(36, 12, 2, 0)))
    assert (swapped.low, swapped.high) == (pytest.approx(-d.high), pytest.approx(-d.low))


def test_no_discordant_image_still_leaves_an_interval_of_the_images_count():
    # Both at 0% on 500 images (post-hoc defenses on an undefended network): the gain is 0, but
    # 500 images cannot rule out a fraction of a point.
    d = paired_difference(torch.zeros(500, dtype=torch.bool), torch.zeros(500, dtype=torch.bool))
    assert d.estimate == 0 and -0.01 < d.low < 0 < d.high < 0.01
    wider = paired_difference(torch.zeros(100, dtype=torch.bool), torch.zeros(100, dtype=torch.bool))
    assert wider.high > d.high


def test_the_interval_covers_the_true_gain_about_95_percent_of_the_time():
    # Paired outcomes at 35% (base) and 37% (defense) robust with correlated errors, 500 images.
    g = torch.Generator().manual_seed(1)
    probs = torch.tensor([0.30, 0.07, 0.05, 0.58])  # both, defense only, base only, neither
    true_gain = float(probs[1] - probs[2])
    covered, trials = 0, 2000
    for _ in range(trials):
        cells = torch.multinomial(probs, 500, replacement=True, generator=g)
        a, b = (cells == 0) | (cells == 1), (cells == 0) | (cells == 2)
        d = paired_difference(a, b)
        covered += d.low <= true_gain <= d.high
    assert 0.93 <= covered / trials <= 0.975


def test_outcomes_of_different_images_are_refused():
    with pytest.raises(ValueError, match="same images"):
        paired_difference(torch.ones(3, dtype=torch.bool), torch.ones(4, dtype=torch.bool))
