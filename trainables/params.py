"""A trial's configuration: the base with its sampled values, and the same as MLflow params."""
from __future__ import annotations

import json
from typing import Any

from smoothblock import Config
from smoothblock.config import FIELD_NAMES


def trial_config(base: Config, params: dict[str, Any]) -> Config:
    """The trial's whole configuration: ``base`` with the sampled ``params`` applied and validated."""
    return base.replace(**{k: v for k, v in params.items() if k in FIELD_NAMES})


def config_params(cfg: Config) -> dict[str, str]:
    """A configuration as MLflow params (lists as JSON): how a trial's run records it."""
    return {k: json.dumps(v) if isinstance(v, (list, tuple)) else str(v) for k, v in cfg.to_dict().items()}
