"""SmoothBlock: random square blocks of a feature map replaced by the mean.

Thesis: "Defending Visual Adversarial Examples with SmoothOut Regularization", Section 3.5,
Algorithm 1. For activations X, block centres C are drawn with rate gamma, B is the union of
the ``b x b`` neighbourhoods N(c) of the centres, and

    y_i = m          if x_i in B          (Algorithm 1, line 15)
    y_i = x_i        otherwise            (line 17), with m = mean(X) (line 12).

Unlike DropBlock nothing is rescaled (Section 3.6). Blocks are shared across channels. ``gamma=
"thesis"`` with ``mean="sample"`` reproduces Algorithm 1 exactly.
"""
from __future__ import annotations

from typing import Literal

import torch

from .base import RandomBlockLayer
from .block_mask import GammaMode, block_gamma, block_mask

MeanScope = Literal["sample", "channel"]
MEAN_SCOPES = ("sample", "channel")


def smooth_block(
    x: torch.Tensor,
    block_size: int,
    keep_prob: float,
    *,
    gamma: GammaMode = "calibrated",
    mean: MeanScope = "sample",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Replace random blocks of ``x`` by its mean (thesis Algorithm 1).

    Args:
        x: activations, shape (N, C, H, W), any float dtype.
        block_size: side ``b`` of the square blocks (clipped at the border).
        keep_prob: ``p``, the probability that a unit is kept; 1 returns ``x`` itself.
        gamma: centre rate, ``"calibrated"`` (kept fraction = p) or ``"thesis"`` ((1-p)/b^2).
        mean: ``"sample"``: m is one mean per sample over (C, H, W), the thesis' m = mean(X);
            ``"channel"``: one mean per sample and channel. Never a mean over the batch, so a
            prediction does not depend on the other images in the batch.
        generator: optional generator on ``x.device``.

    Returns:
        Tensor of the shape and dtype of ``x``. Gradients flow to ``x`` through the kept units and
        through the mean; the mask itself carries no gradient.
    """
    if keep_prob >= 1.0:
        return x
    if mean not in MEAN_SCOPES:
        raise ValueError(f"mean must be one of {', '.join(MEAN_SCOPES)}, got {mean!r}")
    covered = block_mask(x, block_size, block_gamma(x.shape[-2], x.shape[-1], block_size, keep_prob, gamma), generator)
    dims = (1, 2, 3) if mean == "sample" else (2, 3)
    m = x.mean(dim=dims, keepdim=True)
    return torch.where(covered, m, x)


class SmoothBlock(RandomBlockLayer):
    """SmoothBlock layer (thesis Section 3.5, Algorithm 1); see :func:`smooth_block`.

    Active in eval mode by default: it is a test-time defense.

    >>> layer = SmoothBlock(block_size=3, keep_prob=0.7, seed=0)
    >>> layer(torch.randn(8, 16, 32, 32)).shape
    torch.Size([8, 16, 32, 32])
    """

    def __init__(self, block_size: int, keep_prob: float, *, gamma: GammaMode = "calibrated",
                 mean: MeanScope = "sample", **kwargs) -> None:
        super().__init__(block_size, keep_prob, gamma=gamma, **kwargs)
        if mean not in MEAN_SCOPES:
            raise ValueError(f"mean must be one of {', '.join(MEAN_SCOPES)}, got {mean!r}")
        self.mean = mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return x
        return smooth_block(x, self.block_size, self.keep_prob, gamma=self.gamma, mean=self.mean,
                            generator=self.generator_for(x.device))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mean={self.mean!r}"
