"""Block layers: SmoothBlock (the thesis' defense), DropBlock and their per-pass mixture."""
from .base import RandomBlockLayer
from .block_mask import GAMMA_MODES, block_gamma, block_mask
from .drop_block import DropBlock, drop_block
from .mixed import MixedBlock, mixed_block
from .smooth_block import MEAN_SCOPES, SmoothBlock, smooth_block

__all__ = [
    "GAMMA_MODES", "MEAN_SCOPES", "DropBlock", "MixedBlock", "RandomBlockLayer", "SmoothBlock",
    "block_gamma", "block_mask", "drop_block", "mixed_block", "smooth_block",
]
