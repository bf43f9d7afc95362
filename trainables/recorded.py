"""What MLflow already holds when a search resumes: the finished trials' results."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from smoothblock import Config

from .params import config_params


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
