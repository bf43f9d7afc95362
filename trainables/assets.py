"""What every trial of a search shares, loaded once on the driver and shipped by the object store.

Workers never read the driver's disk: on a cluster the data folder and the weights may exist only
where the search was launched.
"""
from __future__ import annotations

import ctypes
import dataclasses
import gc
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Protocol

import safetensors.torch
import torch
import torchattacks

from smoothblock import Config
from smoothblock.attacks import AttackSettings, get_attack
from smoothblock.checkpoint import atomic_write, load_checkpoint
from smoothblock.config import FIELD_NAMES
from smoothblock.data import Splits, TensorDataset, cache_root, fingerprint, iterate_batches, load_splits
from smoothblock.hub import network_from_state, prepare_network, resolve
from smoothblock.device import resolve_device

from .baseline import Baseline, weights_digest


class Scoring(Protocol):
    """What a trial reads from the search's configuration (``search.config.SearchConfig`` is one;
    trainables do not import the search package above them)."""

    model: str | None
    attacks: tuple[str, ...]
    val_images: int
    chunk_images: int
    audit_images: int
    search_seed: int
    attack_rows: int | None
    attack_bf16: bool

    @property
    def metric(self) -> str: ...

    @property
    def chunks(self) -> int: ...

    def attack_settings(self) -> AttackSettings: ...


SCHEDULER_METRIC = "asha_score"

#: Rows (images x ensemble passes) an attack batch holds by default: on a CPU, small batches stay in
#: its caches (a 4-pass trial at position 1 ran 10% faster at 200 rows than at 400, with less activation
#: memory: 0.55 of it); a GPU wants all of a trial's images at once.
ATTACK_ROWS = {"cpu": 200, "cuda": 8192}


def attack_batch(cfg: Config, rows: int | None, device: torch.device) -> int:
    """Images per attack batch for ``cfg``'s defended model: ``rows`` (or the device's default)
    divided by its passes, so an ensemble's autograd graph stays the same size as one pass's."""
    rows = rows or ATTACK_ROWS.get(device.type, ATTACK_ROWS["cpu"])
    return max(1, rows // cfg.passes)


def asha_score(metrics: dict[str, float]) -> float:
    """``robust_acc`` with ``clean_acc`` / 1000 added: the ranking's order (robust, then clean) as
    one number for the scheduler. Most post-hoc defenses leave ~0% to an adaptive attacker, and
    ASHA stops a trial only when it is strictly below the rung's cutoff: on a tie at 0 it would stop none."""
    return metrics["robust_acc"] + metrics["clean_acc"] / 1000


def release_memory() -> None:
    """Give the memory a finished trial freed back to the system.

    Tune runs each trial of a reused worker in a new thread, and glibc gives new threads their own
    malloc arenas: what one trial freed stays in its arena as the next trial allocates in another,
    so a worker grew by about 60 MB a trial (1.1 GB after one trial, 2.1 GB after 16).
    ``malloc_trim`` returns the free pages of every arena; elsewhere than glibc it is a no-op."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def trial_config(base: Config, params: dict[str, Any]) -> Config:
    """The trial's whole configuration: ``base`` with the sampled ``params`` applied and validated."""
    return base.replace(**{k: v for k, v in params.items() if k in FIELD_NAMES})


def config_params(cfg: Config) -> dict[str, str]:
    """A configuration as MLflow params (lists as JSON): how a trial's run records it."""
    return {k: json.dumps(v) if isinstance(v, (list, tuple)) else str(v) for k, v in cfg.to_dict().items()}


@dataclass(frozen=True)
class Recorded:
    """Results MLflow already holds as FINISHED when a search resumes, so no finished trial runs again.

    Attributes:
        by_trial: trial id -> its final metrics.
        by_config: the MLflow params of a finished run -> its final metrics; a trial with the
            same configuration reports these (training and evaluation are seeded: the same numbers).
        sampled: (trial id, sampled values) of the finished trials, in the order they started: a
            search resumed without Ray's saved state proposes these values first, and one resumed
            from it those of the trials that state lost, and so meets them again.
    """

    by_trial: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    by_config: tuple[tuple[dict[str, str], dict[str, float]], ...] = ()
    sampled: tuple[tuple[str, dict[str, Any]], ...] = ()

    @property
    def points(self) -> tuple[dict[str, Any], ...]:
        """The finished trials' sampled values, in the order they started."""
        return tuple(point for _, point in self.sampled)

    def lookup(self, trial_id: str | None, cfg: Config | None = None) -> dict[str, float] | None:
        if trial_id in self.by_trial:
            return self.by_trial[trial_id]
        if cfg is not None:
            params = config_params(cfg)
            for recorded, metrics in self.by_config:
                if recorded == params:
                    return metrics
        return None


@dataclass
class Assets:
    """The search's shared inputs.

    Attributes:
        base: the trials' shared configuration (for posthoc: with the model's arch and classes).
        splits: validation images (the first ``val_images``) and, for training searches, the
            training images; never the test split.
        state_dict: the trained model (posthoc) or the weights to fine-tune from, else None.
        model_config: the configuration stored with those weights.
        transfer: posthoc with ``transfer`` in the suite: its adversarial examples for the
            validation images, (N, 3, H, W) in [0, 1]. They depend only on the weights and the
            images (the defense is off while they are crafted), so the driver crafts them once and
            every trial, the baseline and the audit score the same ones.
        baseline: posthoc: the undefended base's figures on the same images, scored once before
            the trials (:mod:`trainables.baseline`); each trial reports its gain over them.
    """

    base: Config
    splits: Splits
    state_dict: dict[str, torch.Tensor] | None = None
    model_config: Config | None = None
    transfer: torch.Tensor | None = None
    baseline: Baseline | None = None

    def precomputed(self, start: int = 0, stop: int | None = None) -> dict[str, torch.Tensor] | None:
        """The shared adversarial examples of validation images ``start:stop``, for ``evaluate``."""
        return None if self.transfer is None else {"transfer": self.transfer[start:stop]}


def load_assets(trainable: str, base: Config, model: str | None, val_images: int,
                attacks: tuple[str, ...] = (), settings: AttackSettings = AttackSettings(), seed: int = 0) -> Assets:
    """Load the weights and the data a search needs (ConfigError/DataError/CheckpointError on bad
    input); for a posthoc suite with ``transfer``, craft its examples (seeded by ``seed``)."""
    state_dict = model_config = network = None
    if model:
        path = resolve(model)
        model_config, state_dict = load_checkpoint(path)
        # Checked here, on the driver, so weights of another architecture stop the search before
        # its first trial rather than fail every trial.
        network = network_from_state(model_config, state_dict, path)
        # The defense goes into this network: its architecture wins over the base's.
        base = base.replace(arch=model_config.arch, num_classes=model_config.num_classes)
    splits = load_splits(base.data, val_size=base.val_size, split_seed=base.split_seed,
                         subset=base.subset if trainable == "train" else 0,
                         cache_dir=base.cache_dir, need_test=False)
    # An index copies: a slice would be a view that ships the whole validation split's storage.
    splits = dataclasses.replace(splits, val=splits.val.take(torch.arange(min(val_images, len(splits.val)))))
    transfer = None
    if trainable == "posthoc" and "transfer" in attacks:
        transfer = cached_transfer(network, state_dict, splits.val, settings, seed=seed,
                                   device=resolve_device(base.device), cache_dir=base.cache_dir)
    return Assets(base=base, splits=splits, state_dict=state_dict, model_config=model_config, transfer=transfer)


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
        craft = get_attack("transfer").build(network, settings, 0, seed)["transfer_acc"]
        for images, labels in iterate_batches(val, batch_size, device=device):
            crafted.append(craft(images, labels).cpu())
    return torch.cat(crafted)
