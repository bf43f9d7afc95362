"""Checkpoints: weights plus the configuration, loaded without ever unpickling code.

Two formats:

* ``*.safetensors``: final weights, with the configuration (YAML) in the file's metadata.
* ``*.pt``: training state for ``--resume`` (model, optimizer, scheduler, RNG, history), written
  with ``torch.save`` and read with ``torch.load(weights_only=True)``, whose unpickler refuses
  anything but tensors and plain containers, so a crafted file cannot run code.
"""
from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import Config
from .errors import CheckpointError, ConfigError

FORMAT = "smoothblock/1"


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder and rename, so no half-file is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor], cfg: Config,
                 extra: dict[str, str] | None = None) -> None:
    """Save weights and configuration as safetensors (``extra``: more string metadata)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    metadata = {"format": FORMAT, "config": cfg.to_yaml(), **(extra or {})}
    _atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def save_training_state(path: str | Path, state: dict[str, Any]) -> None:
    """Save a training state (tensors, numbers, strings, lists, dicts only)."""
    _atomic_write(Path(path), lambda tmp: torch.save({"format": FORMAT, **state}, tmp))


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Read a ``.pt`` training state with the weights-only unpickler."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc).lower():
            raise CheckpointError(
                f"refused to load {path}: it holds Python objects that would run code when unpickled"
            ) from None
        raise CheckpointError(f"{path} is corrupt or not a checkpoint") from None
    except Exception:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path} is corrupt or not a checkpoint") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "model" not in state:
        raise CheckpointError(f"{path} is not a smoothblock checkpoint")
    return state


def load_checkpoint(path: str | Path) -> tuple[Config, dict[str, torch.Tensor]]:
    """Read the configuration and the model weights of a ``.safetensors`` or ``.pt`` checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                state_dict = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError, RuntimeError):
            raise CheckpointError(f"{path} is corrupt or not a safetensors checkpoint") from None
        if metadata.get("format") != FORMAT or "config" not in metadata:
            raise CheckpointError(f"{path} is not a smoothblock checkpoint (no configuration in it)")
        config_text = metadata["config"]
    else:
        state = load_training_state(path)
        state_dict, config_text = state["model"], state.get("config")
        if not isinstance(config_text, str) or not isinstance(state_dict, dict):
            raise CheckpointError(f"{path} is not a smoothblock checkpoint")
    try:
        cfg = Config.from_yaml(config_text, source=f"configuration in {path}")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    return cfg, state_dict


def load_state_into(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], cfg: Config,
                    path: str | Path) -> None:
    """Load weights strictly; a mismatch means the file holds another architecture."""
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError:
        raise CheckpointError(
            f"{path} does not hold {cfg.arch} weights for {cfg.num_classes} classes "
            "(another architecture?)"
        ) from None
