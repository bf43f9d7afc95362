"""What a finished search leaves: its rows (one per trial), the parent run's summary, the outcome."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import tracking
from .config import SearchConfig
from .ranking import rank
from .tracking import AUDITED

#: The parent run's metrics of the undefended model (``undefended_robust_acc``, ...).
BASELINE_PREFIX = "undefended_"


def log_baseline(client, parent_id: str, assets) -> dict[str, float] | None:
    """The base's figures (``assets.baseline``: :class:`trainables.assets.Assets`) on the parent run
    (``undefended_clean_acc``, ...); what it holds."""
    if assets.baseline is None:
        return None
    logged = client.get_run(parent_id).data.metrics
    values = {f"{BASELINE_PREFIX}{k}": float(v) for k, v in assets.baseline.metrics.items()
              if k.endswith(("_acc", "_broke")) and f"{BASELINE_PREFIX}{k}" not in logged}
    tracking.log_metrics(client, parent_id, values)
    return dict(assets.baseline.metrics)


@dataclass
class Outcome:
    """What a finished search leaves: its configuration, MLflow ids (``tracking_uri`` without
    credentials), its results folder, one row per trial, and (posthoc) the undefended model's
    scores on the same images."""

    search: SearchConfig
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    folder: str
    rows: list[dict[str, Any]]
    baseline: dict[str, float] | None = None


def trial_rows(grid, last_iteration: int) -> list[dict[str, Any]]:
    """One row per trial: its parameters, last metrics, status and whether the scheduler stopped
    it before ``last_iteration`` (its figures then rest on fewer images or epochs)."""
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        stopped = metrics.get("training_iteration", 0) < last_iteration
        if tracking.STOPPED_METRIC in metrics:  # a recorded trial (resume) reported its result once
            stopped = bool(metrics[tracking.STOPPED_METRIC])
        row = {"trial_id": metrics.get("trial_id"), "status": "ERROR" if result.error else "TERMINATED",
               **(result.config or {}), "checkpoint": result.checkpoint}
        row.update({k: v for k, v in metrics.items() if k not in tracking.TUNE_KEYS})
        row["stopped_early"] = stopped
        rows.append(row)
    return rows


def summarize(client, parent_id: str, search: SearchConfig, rows: list[dict[str, Any]]) -> None:
    """The parent run's summary: trial counts and the best trial's metrics."""
    finished = [r for r in rows if r["status"] == "TERMINATED" and search.metric in r]
    client.log_metric(parent_id, "trials_finished", len(finished))
    client.log_metric(parent_id, "trials_failed", sum(r["status"] == "ERROR" for r in rows))
    ranked = rank(finished, search.metric, search.min_clean_acc)
    if ranked:
        best = ranked[0]
        for key in ("clean_acc", search.metric, "passes"):
            client.log_metric(parent_id, f"best_{key}", float(best[key]))
        if AUDITED in best:  # the figure the search stands behind: the audited one
            client.log_metric(parent_id, f"best_{AUDITED}", float(best[AUDITED]))
            client.set_tag(parent_id, "best_obfuscated", str(best["obfuscated"]).lower())
        client.set_tag(parent_id, "best_trial_id", str(best["trial_id"]))
