"""Random block masks shared by SmoothBlock and DropBlock.

Both layers draw block centres at random, grow each centre into a ``block_size x block_size``
square (clipped at the feature-map border) and share the squares across all channels of a
sample (thesis Section 4.1: "shared dropped blocks across feature channels"; DropBlock,
Ghiasi et al. 2018, arXiv:1810.12890). They differ only in what they write into the squares.

Two rates for the centres (``gamma``):

* ``"thesis"``: every unit is a centre with probability ``(1 - keep_prob) / block_size**2``,
  exactly Algorithm 1 of the thesis (lines 4-6). With border clipping and overlapping squares
  the fraction of kept units is then *above* ``keep_prob``.
* ``"calibrated"``: the rate solves ``E[kept fraction] = keep_prob`` for the actual feature-map
  size, overlaps and clipping included, so ``keep_prob`` means what its name says on any map.
"""
from __future__ import annotations

import functools
from typing import Literal

import torch
import torch.nn.functional as F

GammaMode = Literal["calibrated", "thesis"]
GAMMA_MODES = ("calibrated", "thesis")


def _coverage_counts(size: int, block_size: int) -> list[int]:
    """Number of centre positions whose clipped square covers each index along one axis."""
    before = block_size // 2  # squares extend ``before`` units up/left of their centre
    after = block_size - 1 - before
    return [min(size - 1, i + before) - max(0, i - after) + 1 for i in range(size)]


@functools.lru_cache(maxsize=1024)
def block_gamma(height: int, width: int, block_size: int, keep_prob: float, mode: GammaMode) -> float:
    """Rate at which each unit becomes a block centre.

    Args:
        height, width: feature-map size.
        block_size: side ``b`` of the square blocks.
        keep_prob: target probability ``p`` that a unit is kept.
        mode: ``"thesis"`` gives Algorithm 1's ``(1 - p) / b^2``; ``"calibrated"`` solves
            ``mean_ij (1 - gamma) ** n_ij = p`` where ``n_ij`` is the number of centre positions
            whose clipped square covers unit ``(i, j)``.

    Returns:
        gamma in [0, 1].
    """
    if keep_prob >= 1.0:
        return 0.0
    if mode == "thesis":
        return min(1.0, (1.0 - keep_prob) / block_size**2)
    if mode != "calibrated":
        raise ValueError(f"gamma must be one of {GAMMA_MODES}, got {mode!r}")
    rows = _coverage_counts(height, block_size)
    cols = _coverage_counts(width, block_size)
    counts = [r * c for r in rows for c in cols]

    def kept_fraction(gamma: float) -> float:
        return sum((1.0 - gamma) ** n for n in counts) / len(counts)

    # kept_fraction falls monotonically from 1 (gamma=0) to 0 (gamma=1): bisection is exact enough.
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if kept_fraction(mid) > keep_prob:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def block_mask(
    x: torch.Tensor,
    block_size: int,
    gamma: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw the covered units for a batch of feature maps.

    Args:
        x: activations, shape (N, C, H, W); only its shape, device and dtype are used.
        block_size: side of the square blocks; squares are clipped at the border.
        gamma: rate of block centres, see :func:`block_gamma`.
        generator: optional generator on ``x.device`` for reproducible draws.

    Returns:
        Boolean tensor of shape (N, 1, H, W): True where a unit is covered by a block. The same
        squares apply to every channel of a sample; samples are independent.
    """
    n, _, h, w = x.shape
    with torch.no_grad():
        centres = torch.rand((n, 1, h, w), generator=generator, device=x.device) < gamma
        if block_size == 1:
            return centres
        before = block_size // 2
        after = block_size - 1 - before
        # A unit is covered when a centre lies within the square around it; max-pooling the
        # centre map over that window is a vectorised dilation (no loop over centres).
        padded = F.pad(centres.float(), (after, before, after, before))
        return F.max_pool2d(padded, kernel_size=block_size, stride=1) > 0
