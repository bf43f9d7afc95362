"""Where a run computes and in what precision: the device a name means, and whether bfloat16 pays off there."""
from __future__ import annotations

import torch

from .config import Config
from .errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` (a GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N``; ConfigError otherwise."""
    if not (name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit())):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name} asked for, but no CUDA GPU is available")
    return torch.device(name)


def use_bf16(cfg: Config, device: torch.device) -> bool:
    """Whether to train under bfloat16 autocast: ``cfg.bf16``, or where it pays off when None."""
    if cfg.bf16 is not None:
        return cfg.bf16
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    # Native bfloat16 matrix instructions; without them oneDNN emulates bf16 and is slower than fp32.
    return "amx_bf16" in flags or "avx512_bf16" in flags
