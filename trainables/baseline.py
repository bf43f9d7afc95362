"""The undefended base of a post-hoc search, and every trial's gain over it with its uncertainty.

The base (the searched model with no defense) is scored once per search, before the trials, on
the same images, attacks and seeds as they are (:func:`trainables.posthoc.score`), and its
per-image outcomes travel to every trial with the assets. A trial then reports, beside its own
figures, ``robust_gain`` (its ``robust_acc`` minus the base's) and ``clean_cost`` (the base's
``clean_acc`` minus its own), each with the paired 95% interval of :mod:`smoothblock.stats`
(``robust_gain_low``, ``robust_gain_high``, ``clean_cost_low``, ``clean_cost_high``).

The base's figures are kept in the cache folder (``<cache>/baseline/<key>.safetensors``) under a
key of what decides them: the weights' and images' contents, the attacks and their settings, the
seed, the chunks, the batch rows, bf16, the device type and the versions.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import safetensors.torch
import torch
import torchattacks

from smoothblock.checkpoint import atomic_write
from smoothblock.data import cache_root, fingerprint
from smoothblock.stats import paired_difference

#: Bump when a change to the scoring makes cached base figures wrong.
BASELINE_FORMAT = 1


@dataclass(frozen=True)
class Baseline:
    """The base's figures on the search's images.

    Attributes:
        metrics: its ``clean_acc``, ``robust_acc``, each attack's metrics and the image counts.
        clean: (val_images,) bool, each image right without attack.
        robust: (robust_images,) bool, each image right after every attack (the worst case).
    """

    metrics: dict[str, float]
    clean: torch.Tensor
    robust: torch.Tensor


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names and values, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        digest.update(name.encode())
        digest.update(state_dict[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def baseline_key(state_dict: dict[str, torch.Tensor], val, scoring: dict, device: str) -> str:
    """The cache key of a base's figures (the module's docstring lists what it covers)."""
    content = {"format": BASELINE_FORMAT, "weights": weights_digest(state_dict), "images": fingerprint(val),
               "scoring": scoring, "device": device, "torch": torch.__version__,
               "torchattacks": torchattacks.__version__}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:24]


def load_cached(key: str, cache_dir: str | None) -> Baseline | None:
    path = cache_root(cache_dir) / "baseline" / f"{key}.safetensors"
    if not path.is_file():
        return None
    try:
        with safetensors.safe_open(str(path), "pt") as f:
            metrics = json.loads(f.metadata()["metrics"])
            return Baseline(metrics, f.get_tensor("clean").bool(), f.get_tensor("robust").bool())
    except Exception:  # noqa: BLE001 - a damaged cache entry is measured again, never trusted
        return None


def store_cached(key: str, cache_dir: str | None, baseline: Baseline) -> None:
    path = cache_root(cache_dir) / "baseline" / f"{key}.safetensors"
    tensors = {"clean": baseline.clean.to(torch.uint8).contiguous(), "robust": baseline.robust.to(torch.uint8).contiguous()}
    try:
        atomic_write(path, lambda tmp: safetensors.torch.save_file(
            tensors, tmp, metadata={"metrics": json.dumps(baseline.metrics)}))
    except OSError:  # a read-only cache costs the next search the scoring, nothing else
        pass


def gains(clean: torch.Tensor, robust: torch.Tensor, baseline: Baseline | None) -> dict[str, float]:
    """A trial's gain over the base on the images scored so far, with the paired intervals.

    Args:
        clean: (k,) bool, the trial's clean outcome on the first k images.
        robust: (r,) bool, its worst-case outcome on the first r images.
    Returns:
        ``robust_gain``, ``robust_gain_low``, ``robust_gain_high``, ``clean_cost``,
        ``clean_cost_low``, ``clean_cost_high`` (fractions of images); {} without a base.
    """
    if baseline is None:
        return {}
    return {**paired_difference(robust, baseline.robust[: len(robust)]).metrics("robust_gain"),
            **paired_difference(baseline.clean[: len(clean)], clean).metrics("clean_cost")}
