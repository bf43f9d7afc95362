"""Checkpoints: weights plus the configuration, loaded without ever unpickling code.

Two formats:

* ``*.safetensors``: final weights, with the configuration (YAML) in the file's metadata.
* ``*.pt``: training state for ``--resume`` (model, optimizer, scheduler, RNG, history), written
  with ``torch.save`` and read with ``torch.load(weights_only=True)``, whose unpickler refuses
  anything but tensors and plain containers, so a crafted file cannot run code.
"""
from __future__ import annotations

import errno
import os
import pickle
import pickletools
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import Config, ModelSpec
from .errors import CheckpointError, ConfigError
from .settings import parse_yaml

FORMAT = "smoothblock/2"


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder and rename, so no half-file is left: a
    full disk (or a killed process) leaves ``path`` as it was. A write that failed on a disk now
    full raises OSError(ENOSPC) naming ``path`` (torch's zip writer says only "unexpected pos")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        full = isinstance(exc, Exception) and not isinstance(exc, OSError) and _disk_full(path.parent)
        Path(tmp).unlink(missing_ok=True)  # frees what the half-file took: checked before
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc
        raise


def _disk_full(folder: Path) -> bool:
    try:
        return os.statvfs(folder).f_bavail == 0
    except OSError:
        return False


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor], cfg: Config,
                 extra: dict[str, str] | None = None, provenance: dict[str, Any] | None = None) -> None:
    """Save weights as safetensors with, in the metadata, what the model is (``model``: the
    :class:`ModelSpec`, YAML) and where it came from (``provenance``: data name, split, recipe,
    seed; YAML, a record only). How the run executed (device, folders) is not saved.
    ``extra``: more string metadata; ``provenance``: the record to save instead of ``cfg``'s
    (weights that ``cfg`` did not train, such as a trained model with a new test-time defense)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    record = cfg.provenance() if provenance is None else provenance
    metadata = {"format": FORMAT, "model": cfg.spec().to_yaml(),
                "provenance": yaml.safe_dump(record, sort_keys=False), **(extra or {})}
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def save_training_state(path: str | Path, state: dict[str, Any]) -> None:
    """Save a training state (tensors, numbers, strings, lists, dicts only)."""
    atomic_write(Path(path), lambda tmp: torch.save({"format": FORMAT, **state}, tmp))


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Read a ``.pt`` training state with the weights-only unpickler."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols: we refuse them anyway
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # The weights-only unpickler names the global it refused ("unsupported GLOBAL
        # posix.system"), but stops earlier on some raw pickles; a scan of the opcodes (which
        # executes nothing) tells a pickle that imports code from a damaged file.
        if "global" in str(exc).lower() or _imports_code(path):
            raise CheckpointError(
                f"refused to load {path}: it holds Python objects that would run code when unpickled"
            ) from None
        raise CheckpointError(f"{path} is corrupt or not a checkpoint") from None
    except Exception:  # torch raises several types for truncated or foreign files
        if _imports_code(path):
            raise CheckpointError(
                f"refused to load {path}: it holds Python objects that would run code when unpickled"
            ) from None
        raise CheckpointError(f"{path} is corrupt or not a checkpoint") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "model" not in state:
        raise CheckpointError(f"{path} is not a smoothblock checkpoint")
    return state


_SAFE_MODULES = ("torch", "collections", "builtins", "_codecs", "numpy")


def _imports_code(path: Path) -> bool:
    """Whether the pickle in ``path`` (raw, or torch's zip format) imports anything but tensors."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                name = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
                data = zf.read(name) if name else b""
        else:
            data = path.read_bytes()
        strings: list[str] = []
        with warnings.catch_warnings():  # random bytes can look like odd string escapes
            warnings.simplefilter("ignore")
            for opcode, arg, _ in pickletools.genops(data):  # streamed: a GLOBAL before damage counts
                if isinstance(arg, str):
                    strings.append(arg)
                if opcode.name == "GLOBAL":
                    module = str(arg).split(" ")[0]
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    module = strings[-2]
                else:
                    continue
                if module.split(".")[0] not in _SAFE_MODULES:
                    return True
    except Exception:  # not a pickle at all
        return False
    return False


def load_checkpoint(path: str | Path) -> tuple[Config, dict[str, torch.Tensor]]:
    """What a ``.safetensors`` or ``.pt`` checkpoint's model is, and its weights.

    The configuration returned holds the checkpoint's :class:`ModelSpec` and the defaults for
    everything else: the data, recipe and folders it was trained with are a record, never
    settings of the next run."""
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
        if metadata.get("format") != FORMAT or "model" not in metadata:
            raise CheckpointError(f"{path} is not a smoothblock checkpoint (no configuration in it)")
        config_text = metadata["model"]
    else:
        state = load_training_state(path)
        state_dict, config_text = state["model"], state.get("config")
        if not isinstance(config_text, str) or not isinstance(state_dict, dict):
            raise CheckpointError(f"{path} is not a smoothblock checkpoint")
    source = f"configuration in {path}"
    try:
        saved = parse_yaml(config_text, source)
        spec = ModelSpec.from_dict({k: v for k, v in saved.items() if k in ModelSpec.model_fields}, source=source)
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    return Config(**dict(spec)), state_dict


def read_provenance(path: str | Path) -> dict[str, Any]:
    """The provenance record of a ``.safetensors`` file ({} when it has none)."""
    with safe_open(str(path), framework="pt") as f:
        text = (f.metadata() or {}).get("provenance")
    return parse_yaml(text, f"provenance in {path}") if text else {}


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
