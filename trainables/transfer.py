"""The transfer attack's examples of a posthoc search: crafted once on the trained weights (the
defense off), cached by content, shared by every trial, the baseline and the audit."""
from __future__ import annotations

import hashlib
import json

import safetensors.torch
import torch
import torchattacks

from smoothblock.attacks import AttackSettings, get_attack, metric_name
from smoothblock.checkpoint import atomic_write
from smoothblock.data import TensorDataset, cache_root, fingerprint, iterate_batches
from smoothblock.hub import prepare_network

from .baseline import weights_digest


#: Bump when a change to the transfer attack makes cached examples wrong.
TRANSFER_FORMAT = 2


def cached_transfer(network: torch.nn.Module, state_dict: dict[str, torch.Tensor], val: TensorDataset,
                    settings: AttackSettings, *, seed: int, device: torch.device,
                    cache_dir: str | None = None) -> torch.Tensor:
    """:func:`craft_transfer`'s examples, kept in the cache folder (``<cache>/transfer/<key>.safetensors``)
    under a key of the weights' and images' contents, the attack settings, the seed, the device type
    and the versions: a search started again on the same model and images does not craft them again."""
    content = {"format": TRANSFER_FORMAT, "weights": weights_digest(state_dict), "images": fingerprint(val),
               "settings": settings.to_dict(), "seed": seed, "device": device.type,
               "torch": torch.__version__, "torchattacks": torchattacks.__version__}
    key = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:24]
    path = cache_root(cache_dir) / "transfer" / f"{key}.safetensors"
    if path.is_file():
        try:
            return safetensors.torch.load_file(path)["transfer"]
        except Exception:  # noqa: BLE001 - a damaged cache entry is crafted again, never trusted
            pass
    crafted = craft_transfer(network, val, settings, seed=seed, device=device)
    try:
        atomic_write(path, lambda tmp: safetensors.torch.save_file({"transfer": crafted.contiguous()}, tmp))
    except OSError:  # a read-only cache costs the next search the crafting, nothing else
        pass
    return crafted


def craft_transfer(network: torch.nn.Module, val: TensorDataset, settings: AttackSettings, *, seed: int,
                   device: torch.device, batch_size: int = 250) -> torch.Tensor:
    """The transfer attack's examples for every image of ``val``, crafted on ``network`` (the
    trained weights) with the registry's ``transfer`` entry, which crafts with the defense off:
    (N, 3, H, W) float in [0, 1]."""
    network = prepare_network(network, device)  # as the trials' models: the same logits, faster
    crafted = []
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(seed)
        craft = get_attack("transfer").build(network, settings, 0, seed)[metric_name("transfer")]
        for images, labels in iterate_batches(val, batch_size, device=device):
            crafted.append(craft(images, labels).cpu())
    return torch.cat(crafted)
