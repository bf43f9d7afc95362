"""Export the best configurations of a finished search, as files ``smoothblock train --config`` takes.

The source of truth is MLflow: the child runs of the search, their metrics and their
``config.yaml`` artifacts. A training search's short schedule was for ranking only, so the export
trains in full: ``epochs`` back to the recipe's, ``subset`` back to all training images.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from smoothblock import Config
from smoothblock.checkpoint import atomic_write
from smoothblock.errors import ConfigError

from . import tracking
from .config import OBJECTIVE_METRICS


def rank(rows: list[dict[str, Any]], metric: str, min_clean_acc: float | None = None) -> list[dict[str, Any]]:
    """Feasible trials first (clean_acc >= min_clean_acc), then by ``metric``, clean_acc, fewer passes."""
    floor = min_clean_acc or 0.0
    return sorted(rows, key=lambda r: (r["clean_acc"] < floor, -r[metric], -r["clean_acc"], r["passes"]))


def pareto_front(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Trials no other trial beats on clean_acc, ``metric`` and passes (max, max, min) at once."""
    def key(r):
        return (r["clean_acc"], r[metric], -r["passes"])

    front = [r for r in rows if not any(all(a >= b for a, b in zip(key(o), key(r))) and key(o) != key(r)
                                        for o in rows)]
    return sorted(front, key=lambda r: -r[metric])


def finished_trials(client, name: str) -> tuple[list[dict[str, Any]], dict[str, str], str]:
    """The search's FINISHED child runs as rows (metrics, run_id), the parent run's params and the
    objective's metric."""
    experiment = tracking.find_experiment(client, name)
    parent = tracking.parent_run_id(client, experiment.experiment_id) if experiment else None
    if parent is None:
        raise ConfigError(f"MLflow holds no search named {name!r}")
    params = client.get_run(parent).data.params
    rows = [{**run.data.metrics, "run_id": run.info.run_id, "run_name": run.info.run_name}
            for run in tracking.child_runs(client, experiment.experiment_id, parent)
            if run.info.status == "FINISHED"]
    metric = OBJECTIVE_METRICS[params.get("attack", "pgd")]
    rows = [r for r in rows if {"clean_acc", metric, "passes"} <= set(r)]
    if not rows:
        raise ConfigError(f"search {name!r} has no finished trial to export yet")
    return rows, params, metric


def export(name: str, out: str, *, top: int = 1, pareto: bool = False, mlflow_uri: str | None = None) -> list[Path]:
    """Write the best ``top`` trials (or the Pareto front) as training configurations.

    One trial -> ``out``; several -> ``out`` with ``-1``, ``-2``, ... before the suffix.
    Returns the paths written.
    """
    if top < 1:
        raise ConfigError(f"--top must be >= 1, got {top}")
    client = tracking.connect(tracking.resolve_tracking_uri(mlflow_uri))
    rows, params, metric = finished_trials(client, name)
    floor = float(params["min_clean_acc"]) if params.get("min_clean_acc", "None") != "None" else None
    chosen = pareto_front(rows, metric) if pareto else rank(rows, metric, floor)[:top]
    out_path = Path(out)
    if out_path.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"-o must name a .yaml file, got {out}")
    targets = [out_path] if len(chosen) == 1 else [
        out_path.with_name(f"{out_path.stem}-{i}{out_path.suffix}") for i in range(1, len(chosen) + 1)]
    texts = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, row in enumerate(chosen, 1):
            local = client.download_artifacts(row["run_id"], "config.yaml", tmp + f"/{i}")
            cfg = Config.load(local).replace(epochs=None, subset=None, out_dir=f"runs/{name}-best-{i}")
            scores = f"clean_acc {row['clean_acc']:.4f}, {metric} {row[metric]:.4f}, passes {int(row['passes'])}"
            texts.append(f"# Exported from search {name}, trial {row['run_name']} (MLflow run {row['run_id']}):\n"
                         f"# {scores} on the validation split.\n# Train it: smoothblock train --config THIS_FILE\n"
                         + cfg.to_yaml())
    for path, text in zip(targets, texts):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp, text=text: Path(tmp).write_text(text, encoding="utf-8"))
    return targets
