"""DropBlock (Ghiasi, Lin, Le 2018, arXiv:1810.12890), active at test time as in thesis Section 4.2.

Covered units are set to zero and kept units are scaled by count(M) / count_ones(M) (Ghiasi et
al., Algorithm 1, line 7), so the expected magnitude is kept. The count is taken per sample, not
over the batch, so that a prediction does not depend on the other images in the batch.
"""
from __future__ import annotations

import torch

from .base import RandomBlockLayer
from .block_mask import GammaMode, block_gamma, block_mask


def drop_block(
    x: torch.Tensor,
    block_size: int,
    keep_prob: float,
    *,
    gamma: GammaMode = "calibrated",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Zero random blocks of ``x`` and rescale the kept units.

    Args:
        x: activations, shape (N, C, H, W).
        block_size: side of the square blocks (clipped at the border).
        keep_prob: probability that a unit is kept; 1 returns ``x`` itself.
        gamma: centre rate, ``"calibrated"`` or ``"thesis"`` (the latter uses (1-p)/b^2 like SmoothBlock).
        generator: optional generator on ``x.device``.

    Returns:
        Tensor of the shape and dtype of ``x``. A sample whose every unit is covered becomes zero.
    """
    if keep_prob >= 1.0:
        return x
    covered = block_mask(x, block_size, block_gamma(x.shape[-2], x.shape[-1], block_size, keep_prob, gamma), generator)
    keep = (~covered).to(x.dtype)
    units = covered.shape[-2] * covered.shape[-1]
    scale = units / keep.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1.0)
    return x * (keep * scale)


class DropBlock(RandomBlockLayer):
    """DropBlock layer with blocks shared across channels; see :func:`drop_block`.

    Unlike timm's ``DropBlock2d`` it stays random in eval mode unless ``active_in_eval=False``.

    >>> DropBlock(block_size=3, keep_prob=0.7, seed=0)(torch.ones(2, 4, 8, 8)).shape
    torch.Size([2, 4, 8, 8])
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return x
        return drop_block(x, self.block_size, self.keep_prob, gamma=self.gamma,
                          generator=self.generator_for(x.device))
