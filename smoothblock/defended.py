"""Build the defended model a configuration describes."""
from __future__ import annotations

import functools

import torch
from torch import nn

from .config import Config
from .ensemble import SelfEnsemble
from .layers import DropBlock, MixedBlock, SmoothBlock
from .models import create_model


def defense_factory(cfg: Config):
    """A zero-argument factory of the block layer ``cfg`` asks for, or None for no defense.

    The layer draws from torch's global generator, so ``torch.manual_seed`` makes a run
    reproducible; ``defense_at`` decides whether it is random in training, in eval, or both.
    """
    if not cfg.defended:
        return None
    switches = dict(active_in_train=cfg.defense_at in ("train", "both"),
                    active_in_eval=cfg.defense_at in ("test", "both"))
    common = dict(block_size=cfg.block_size, keep_prob=cfg.keep_prob, gamma=cfg.gamma, **switches)
    if cfg.method == "smoothblock":
        return functools.partial(SmoothBlock, mean=cfg.mean, **common)
    if cfg.method == "dropblock":
        return functools.partial(DropBlock, **common)
    return functools.partial(MixedBlock, mean=cfg.mean, smooth_prob=cfg.smooth_prob, **common)


def build_model(cfg: Config) -> nn.Module:
    """The network of ``cfg`` with its block layers (no ensemble): what training updates.

    Returns a module mapping images in [0, 1], (N, 3, H, W), to logits (N, num_classes).
    """
    factory = defense_factory(cfg)
    defenses = {p: factory for p in cfg.positions} if factory else {}
    return create_model(cfg.arch, num_classes=cfg.num_classes, defenses=defenses)


class Autocast(nn.Module):
    """``model`` run under bfloat16 autocast, its logits returned in float32.

    For attacks on a GPU, whose bf16 convolutions have a far higher peak than float32's: autocast
    keeps the softmax and the loss in float32, but the attack's gradients pass through bf16
    activations. An attack that gets weaker this way would make a defense look more robust than it
    is, so it is opt-in (``attack_bf16``). On the CPU, PGD-7 at eps 1 and 2/255 left the same
    accuracy within 0.4 points as float32 (500 validation images, ResNet20 with and without
    SmoothBlock; benchmarks/bench_attack_bf16.py, BENCHMARKS.md); it is not measured on a GPU, so
    compare a few trials with float32 there before trusting it.
    """

    def __init__(self, model: nn.Module, device_type: str) -> None:
        super().__init__()
        self.model = model
        self.device_type = device_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.model(x).float()


def wrap_for_inference(model: nn.Module, cfg: Config) -> nn.Module:
    """``model`` behind the self-ensemble when ``cfg`` asks for more than one pass."""
    return SelfEnsemble(model, cfg.passes) if cfg.passes > 1 else model
