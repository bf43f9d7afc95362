"""The mixed layer of the thesis' self-ensemble (Section 4.5): SmoothBlock or DropBlock at random.

"by randomly picking one regularization term from DropBlock and SmoothBlock in each testing phase".
The choice is drawn per sample, so that n passes batched together (the self-ensemble) have the
same distribution as n separate passes, and a prediction does not depend on the rest of the batch.
"""
from __future__ import annotations

import torch

from .base import RandomBlockLayer
from .block_mask import GammaMode
from .drop_block import drop_block
from .smooth_block import MEAN_SCOPES, MeanScope, smooth_block


def mixed_block(
    x: torch.Tensor,
    block_size: int,
    keep_prob: float,
    *,
    smooth_prob: float = 0.5,
    gamma: GammaMode = "calibrated",
    mean: MeanScope = "sample",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SmoothBlock with probability ``smooth_prob``, else DropBlock, drawn per sample.

    Args:
        x: activations, shape (N, C, H, W).
        smooth_prob: probability of SmoothBlock for each sample.
        Other arguments as in :func:`smooth_block` and :func:`drop_block`.

    Returns:
        Tensor of the shape of ``x``.
    """
    if keep_prob >= 1.0:
        return x
    smooth = smooth_block(x, block_size, keep_prob, gamma=gamma, mean=mean, generator=generator)
    drop = drop_block(x, block_size, keep_prob, gamma=gamma, generator=generator)
    pick = torch.rand((x.shape[0], 1, 1, 1), generator=generator, device=x.device) < smooth_prob
    return torch.where(pick, smooth, drop)


class MixedBlock(RandomBlockLayer):
    """SmoothBlock or DropBlock on each pass, per sample (thesis Section 4.5); see :func:`mixed_block`."""

    def __init__(self, block_size: int, keep_prob: float, *, smooth_prob: float = 0.5,
                 gamma: GammaMode = "calibrated", mean: MeanScope = "sample", **kwargs) -> None:
        super().__init__(block_size, keep_prob, gamma=gamma, **kwargs)
        if not 0.0 <= smooth_prob <= 1.0:
            raise ValueError(f"smooth_prob must be in [0, 1], got {smooth_prob!r}")
        if mean not in MEAN_SCOPES:
            raise ValueError(f"mean must be one of {', '.join(MEAN_SCOPES)}, got {mean!r}")
        self.smooth_prob = smooth_prob
        self.mean = mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return x
        return mixed_block(x, self.block_size, self.keep_prob, smooth_prob=self.smooth_prob,
                           gamma=self.gamma, mean=self.mean, generator=self.generator_for(x.device))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, smooth_prob={self.smooth_prob}, mean={self.mean!r}"
