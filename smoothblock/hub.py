"""``load_model``: a shipped name or a checkpoint path -> the whole defended model, in eval mode."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import load_checkpoint, load_state_into
from .config import Config
from .defended import build_model, wrap_for_inference
from .errors import CheckpointError, ConfigError
from .models import CifarResNet

WEIGHTS_DIR = Path(__file__).parent / "weights"


def list_pretrained() -> list[str]:
    """Names of the weights shipped inside the package."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors"))


def resolve(name_or_path: str | Path) -> Path:
    """The file behind a shipped name or a path; CheckpointError when neither exists."""
    shipped = WEIGHTS_DIR / f"{name_or_path}.safetensors"
    if shipped.is_file():
        return shipped
    path = Path(name_or_path)
    if path.is_file():
        return path
    known = ", ".join(list_pretrained()) or "none shipped yet"
    raise CheckpointError(f"{name_or_path} is neither a shipped model ({known}) nor a checkpoint file")


def apply_overrides(saved: Config, path: str | Path, **overrides: Any) -> Config:
    """``saved`` (a checkpoint's configuration) with ``overrides``; the architecture cannot change."""
    if "arch" in overrides and overrides["arch"] != saved.arch:
        raise CheckpointError(f"{path} holds a {saved.arch}, not a {overrides['arch']}")
    try:
        return saved.replace(**overrides)
    except ConfigError as exc:
        raise ConfigError(f"override: {exc}") from None


def network_from_state(cfg: Config, state_dict: dict[str, torch.Tensor], source: str | Path) -> nn.Module:
    """``cfg``'s network (no ensemble wrapper) with ``state_dict`` loaded, in eval mode;
    CheckpointError naming ``source`` when the weights do not fit it."""
    model = build_model(cfg)
    load_state_into(model, state_dict, cfg, source)
    return model.eval()


def load_model(name_or_path: str | Path, *, device: str | torch.device = "cpu", **overrides: Any) -> nn.Module:
    """Load a shipped model or a checkpoint as the whole defended model.

    Args:
        name_or_path: a name from :func:`list_pretrained` or a ``.safetensors`` / ``.pt`` file.
        device: where to put the model.
        **overrides: configuration fields that change the defense without retraining, for example
            ``method="smoothblock", positions=[1], block_size=3, keep_prob=0.7, ensemble=8``.

    Returns:
        An nn.Module in eval mode that maps images in [0, 1], (N, 3, 32, 32), to the logits of the
        defended model, ensemble included (for ensembles: log of the mean softmax), shape (N, K).
        Its configuration is at ``model.smoothblock_config``. It is for inference and attacks only:
        the CIFAR ResNets come with their batch norms folded into the convolutions
        (:meth:`~smoothblock.models.CifarResNet.fold_batchnorm`); to train from its weights, set
        ``init_from`` in the training configuration.
    """
    path = resolve(name_or_path)
    saved, state_dict = load_checkpoint(path)
    return model_from_state(apply_overrides(saved, path, **overrides), state_dict, device=device, source=path)


def model_from_state(cfg: Config, state_dict: dict[str, torch.Tensor], *, device: str | torch.device = "cpu",
                     source: str | Path = "weights") -> nn.Module:
    """What :func:`load_model` returns, from weights already in memory (a search's workers get them
    once through the object store): ``cfg``'s defended model, ensemble included, in eval mode."""
    return _for_inference(network_from_state(cfg, state_dict, source), cfg, device)


def prepare_network(network: nn.Module, device: str | torch.device) -> nn.Module:
    """``network`` (no ensemble wrapper) made ready for inference and attacks, in place: a CIFAR
    ResNet's batch norms folded into its convolutions, channels_last on ``device``, eval mode.
    Every attacked model goes through here: the trials' (via :func:`load_model`) and the network the
    transfer attack crafts on."""
    # channels_last: attacks' forward and backward passes ran 1.35x faster on the CPU (ResNet20,
    # fp32, 2 threads: 565 -> 765 images/s under PGD), and training uses it already.
    if isinstance(network, CifarResNet):
        network.fold_batchnorm()
    return network.to(device, memory_format=torch.channels_last).eval()


def _for_inference(model: nn.Module, cfg: Config, device: str | torch.device) -> nn.Module:
    wrapped = wrap_for_inference(prepare_network(model, device), cfg).to(device).eval()
    wrapped.smoothblock_config = cfg
    return wrapped
