"""What SmoothBlock, DropBlock and the mixed layer share as modules: arguments, switches, seeds."""
from __future__ import annotations

import torch
from torch import nn

from .block_mask import GAMMA_MODES, GammaMode


def check_block_args(block_size: int, keep_prob: float, gamma: str) -> None:
    """Raise ValueError with one clear line for arguments no block layer accepts."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be an integer >= 1, got {block_size!r}")
    if isinstance(keep_prob, bool) or not isinstance(keep_prob, (int, float)) or not 0.0 < keep_prob <= 1.0:
        raise ValueError(f"keep_prob must be in (0, 1], got {keep_prob!r}")
    if gamma not in GAMMA_MODES:
        raise ValueError(f"gamma must be one of {', '.join(GAMMA_MODES)}, got {gamma!r}")


class RandomBlockLayer(nn.Module):
    """Base for the block layers: when to be random, and where the randomness comes from.

    Randomness is an explicit switch, not ``self.training``: these layers are test-time defenses,
    and attack libraries (torchattacks, AutoAttack) put models in eval mode, so a layer that fell
    silent in eval mode would be attacked as a deterministic model.

    Args:
        block_size: side of the square blocks.
        keep_prob: probability that a unit is kept; 1 makes the layer the identity.
        gamma: ``"calibrated"`` or ``"thesis"``, see :func:`smoothblock.layers.block_mask.block_gamma`.
        active_in_train: apply the layer when the module is in training mode.
        active_in_eval: apply the layer when the module is in eval mode.
        generator: a ``torch.Generator`` for reproducible draws (on the input's device).
        seed: alternatively a seed; a generator is then created on the input's device on first use.
    """

    def __init__(
        self,
        block_size: int,
        keep_prob: float,
        *,
        gamma: GammaMode = "calibrated",
        active_in_train: bool = True,
        active_in_eval: bool = True,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        check_block_args(block_size, keep_prob, gamma)
        if generator is not None and seed is not None:
            raise ValueError("give either generator or seed, not both")
        self.block_size = block_size
        self.keep_prob = float(keep_prob)
        self.gamma = gamma
        self.active_in_train = active_in_train
        self.active_in_eval = active_in_eval
        self.generator = generator
        self.seed = seed

    @property
    def active(self) -> bool:
        """Whether the next forward pass is random (depends on train/eval mode and the switches)."""
        return self.active_in_train if self.training else self.active_in_eval

    def generator_for(self, device: torch.device) -> torch.Generator | None:
        """The generator to draw from on ``device``; None means torch's global generator."""
        if self.generator is None and self.seed is not None:
            self.generator = torch.Generator(device=device).manual_seed(self.seed)
        if self.generator is not None and self.generator.device.type != torch.device(device).type:
            raise ValueError(
                f"the layer's generator is on {self.generator.device}, the input on {device}"
            )
        return self.generator

    def extra_repr(self) -> str:
        return (
            f"block_size={self.block_size}, keep_prob={self.keep_prob}, gamma={self.gamma!r}, "
            f"active_in_train={self.active_in_train}, active_in_eval={self.active_in_eval}"
        )
