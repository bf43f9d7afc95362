"""What every trial of a search shares, loaded once on the driver and shipped by the object store.

Workers never read the driver's disk: on a cluster the data folder and the weights may exist only
where the search was launched.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from smoothblock import Config
from smoothblock.attacks import AttackSettings
from smoothblock.checkpoint import load_checkpoint
from smoothblock.data import Splits, load_splits
from smoothblock.device import resolve_device
from smoothblock.hub import network_from_state, resolve

from .baseline import Baseline
from .transfer import cached_transfer


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


#: What :func:`load_weights` gives: the base (with the weights' arch and classes), the state
#: dict, the configuration stored with it and the network built from both (all None without a model).
Weights = tuple[Config, "dict[str, torch.Tensor] | None", "Config | None", "torch.nn.Module | None"]


def load_weights(base: Config, model: str | None) -> Weights:
    """The trained model (posthoc) or the weights to fine-tune from, checked against their
    architecture here, on the driver, so weights of another architecture stop the search before
    its first trial rather than fail every trial (ConfigError/CheckpointError on bad input)."""
    if not model:
        return base, None, None, None
    path = resolve(model)
    model_config, state_dict = load_checkpoint(path)
    network = network_from_state(model_config, state_dict, path)
    # The defense goes into this network: its architecture wins over the base's.
    return base.replace(arch=model_config.arch, num_classes=model_config.num_classes), state_dict, model_config, network


def load_assets(trainable: str, base: Config, model: str | None, val_images: int,
                attacks: tuple[str, ...] = (), settings: AttackSettings = AttackSettings(), seed: int = 0,
                weights: Weights | None = None) -> Assets:
    """Load the weights (or take ``weights``, from :func:`load_weights`) and the data a search needs
    (ConfigError/DataError/CheckpointError on bad input); for a posthoc suite with ``transfer``,
    craft its examples (seeded by ``seed``)."""
    base, state_dict, model_config, network = weights or load_weights(base, model)
    splits = load_splits(base.data, val_size=base.val_size, split_seed=base.split_seed,
                         subset=base.subset if trainable == "train" else 0,
                         cache_dir=base.cache_dir, need_test=False, val_images=val_images)
    transfer = None
    if trainable == "posthoc" and "transfer" in attacks:
        transfer = cached_transfer(network, state_dict, splits.val, settings, seed=seed,
                                   device=resolve_device(base.device), cache_dir=base.cache_dir)
    return Assets(base=base, splits=splits, state_dict=state_dict, model_config=model_config, transfer=transfer)
