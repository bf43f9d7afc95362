"""What every trial of a search shares, loaded once on the driver and shipped by the object store.

Workers never read the driver's disk: on a cluster the data folder and the weights may exist only
where the search was launched.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from smoothblock import Config
from smoothblock.checkpoint import load_checkpoint
from smoothblock.config import FIELD_NAMES
from smoothblock.data import Splits, load_splits
from smoothblock.hub import network_from_state, resolve


class Scoring(Protocol):
    """What a trial reads from the search's configuration (``search.config.SearchConfig`` is one;
    trainables do not import the search package above them)."""

    model: str | None
    attack: str
    val_images: int
    eot_iter: int
    seed: int

    @property
    def metric(self) -> str: ...


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
        points: the sampled values of the finished trials, in the order they started: a search
            resumed without Ray's saved state proposes these first, and so meets them again.
    """

    by_trial: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    by_config: tuple[tuple[dict[str, str], dict[str, float]], ...] = ()
    points: tuple[dict[str, Any], ...] = ()

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
    """

    base: Config
    splits: Splits
    state_dict: dict[str, torch.Tensor] | None = None
    model_config: Config | None = None


def load_assets(trainable: str, base: Config, model: str | None, val_images: int) -> Assets:
    """Load the weights and the data a search needs (ConfigError/DataError/CheckpointError on bad input)."""
    state_dict = model_config = None
    if model:
        path = resolve(model)
        model_config, state_dict = load_checkpoint(path)
        # Checked here, on the driver, so weights of another architecture stop the search before
        # its first trial rather than fail every trial.
        network_from_state(model_config, state_dict, path)
        # The defense goes into this network: its architecture wins over the base's.
        base = base.replace(arch=model_config.arch, num_classes=model_config.num_classes)
    splits = load_splits(base.data, val_size=base.val_size, split_seed=base.split_seed,
                         subset=base.subset if trainable == "train" else 0,
                         cache_dir=base.cache_dir, need_test=False)
    splits = dataclasses.replace(splits, val=splits.val.take(slice(0, val_images)))
    return Assets(base=base, splits=splits, state_dict=state_dict, model_config=model_config)
