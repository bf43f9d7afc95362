"""MLflow: one experiment per search, one parent run, one nested child run per trial.

Everything is logged from the driver (a Tune callback), so workers need no access to the tracking
server and a sqlite store has a single writer. The child run of a trial is found again by its
``ray.trial_id`` tag, so a resumed search or a retried trial goes on in the same run: no trial is
logged twice, and runs left RUNNING by a killed driver are closed when the search ends.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException

from smoothblock import Config
from smoothblock.errors import ConfigError
from smoothblock.version import commit
from trainables.params import config_params
from trainables.recorded import Recorded

# The store's functions, under the names the rest of the search uses (tracking.connect, ...).
from .tracking_store import _FULL_URIS, connect, fail_fast, redact, resolve_tracking_uri, store_lock  # noqa: F401

ROLE_TAG = "smoothblock.role"
TRIAL_TAG = "ray.trial_id"
PARENT_TAG = "mlflow.parentRunId"
AUDIT_PREFIX = "audit_"              # a finalist's audit figures on its run: audit_robust_acc, ...
AUDITED = "audited_robust_acc"       # the audited worst case, which replaces the finalist's score
STOPPED_TAG = "smoothblock.stopped_early"  # the scheduler stopped the trial before its last report
STOPPED_METRIC = "stopped_early"           # the same, in a recorded trial's report on resume
SAMPLED_TAG = "smoothblock.sampled"  # the values Optuna proposed for the trial (a starting point again)
CONFIG_TAG = "smoothblock.config"    # the trial's whole configuration, as YAML (what export writes from)
#: Result keys Tune adds to every report: bookkeeping, not measurements (time_total_s is kept).
TUNE_KEYS = {"timestamp", "training_iteration", "time_this_iter_s", "pid", "time_since_restore",
             "iterations_since_restore", "done", "date", "hostname", "node_ip", "trial_id", "experiment_tag",
             "checkpoint_dir_name", "config", "should_checkpoint", "timesteps_total", "episodes_total",
             "timesteps_since_restore", "warmup_time"}


def search_params(search: Any) -> dict[str, str]:
    """The parent run's params, under the names its trials use for the same things: the shared
    configuration's fields as the trials log them (``data``, ``recipe``, ...; the searched ones
    are left to the trials), the search's own settings (``trials``, ``attacks``, ...), and the
    space as ``space.<name>``."""
    searched = set(search.space.to_dict())
    params = {k: v for k, v in config_params(search.base).items() if k not in searched}
    own = {k: v for k, v in search.to_dict().items() if k != "base"}
    return {**params, **flat_params(own)}


def flat_params(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested mapping as MLflow params: ``{"base": {"data": x}}`` -> ``{"base.data": "x"}``."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and not {"low", "high"} >= set(value):
            out.update(flat_params(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return out


def log_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    items = [Param(k, v[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=items[i:i + 100])


def log_metrics(client: MlflowClient, run_id: str, values: dict[str, float], step: int = 0) -> None:
    """``values`` on the run in one request (at most 1,000 metrics, MLflow's batch limit)."""
    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in values.items()]
    for i in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=items[i:i + 1000])


def connect_new(uri: str, name: str, folder_exists: bool) -> MlflowClient:
    """A client for a new search named ``name`` (ConfigError when MLflow, or the results folder,
    already holds one of that name)."""
    client = connect(uri)
    existing = client.get_experiment_by_name(name)
    if existing is not None and existing.lifecycle_stage != "active":
        raise ConfigError(f"MLflow holds a deleted experiment named {name!r}; choose another --name "
                          "(or purge it with `mlflow gc`)")
    if existing is not None or folder_exists:
        raise ConfigError(f"a search named {name!r} already exists; pass --resume {name} or choose another --name")
    return client


def find_experiment(client: MlflowClient, name: str):
    experiment = client.get_experiment_by_name(name)
    return experiment if experiment is not None and experiment.lifecycle_stage == "active" else None


def parent_run_id(client: MlflowClient, experiment_id: str) -> str | None:
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'search'", max_results=1)
    return runs[0].info.run_id if runs else None


def child_runs(client: MlflowClient, experiment_id: str, parent_id: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'",
                                  max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def run_label(cfg: Config) -> str:
    """A trial's defense in one line, its run name in MLflow's compare view:
    ``smoothblock p1 b3 k0.70 x4`` (method, positions, block size, keep prob, passes; ``s`` is
    mixed's SmoothBlock probability; ``train``/``both`` when the layer is also on in training)."""
    if cfg.method == "none":
        return "none"
    parts = [cfg.method, "p" + "+".join(map(str, cfg.positions)), f"b{cfg.block_size}", f"k{cfg.keep_prob:.2f}"]
    if cfg.method == "mixed":
        parts.append(f"s{cfg.smooth_prob:.2f}")
    parts.append(f"x{cfg.passes}")
    if cfg.defense_at != "test":
        parts.append(cfg.defense_at)
    return " ".join(parts)


def search_tags(search: Any) -> dict[str, str]:
    """Tags on the parent run and every child run: the search, its trainable, the code's commit."""
    return {"smoothblock.search": search.name, "smoothblock.trainable": search.trainable,
            "smoothblock.commit": commit()}


def start_search_run(client: MlflowClient, name: str, search_yaml: str, params: dict[str, str],
                     tags: dict[str, str] | None = None) -> tuple[str, str]:
    """Create the search's experiment and parent run, or complete those a driver killed while
    launching left behind; returns (experiment_id, parent_run_id)."""
    experiment = find_experiment(client, name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(name, tags={ROLE_TAG: "search"})
    run_id = parent_run_id(client, experiment_id)
    if run_id is None:
        run_id = client.create_run(experiment_id, run_name=name, tags={ROLE_TAG: "search", **(tags or {})}).info.run_id
    log_params(client, run_id, params)
    client.log_text(run_id, search_yaml, "search.yaml")
    return experiment_id, run_id


def reopen_search_run(client: MlflowClient, name: str) -> tuple[str, str]:
    experiment = find_experiment(client, name)
    run_id = parent_run_id(client, experiment.experiment_id) if experiment else None
    if run_id is None:
        raise ConfigError(f"MLflow holds no search named {name!r} to resume")
    client.update_run(run_id, status="RUNNING")
    return experiment.experiment_id, run_id


def search_yaml(client: MlflowClient, parent_id: str) -> str:
    """The search configuration the parent run holds (its ``search.yaml`` artifact)."""
    with tempfile.TemporaryDirectory() as folder:
        try:
            return Path(client.download_artifacts(parent_id, "search.yaml", folder)).read_text(encoding="utf-8")
        except (MlflowException, OSError):
            raise ConfigError("the search's MLflow parent run holds no search.yaml: it was interrupted "
                              "before it started; launch it again under another --name") from None


def trial_run(client: MlflowClient, experiment_id: str, parent_id: str, trial_id: str):
    """The child run of Ray trial ``trial_id``, or None."""
    runs = client.search_runs([experiment_id], max_results=1,
                              filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'")
    return runs[0] if runs else None


def log_audit(client: MlflowClient, run_id: str, audit: dict[str, Any]) -> None:
    """A finalist's audit on its run: ``audit_<metric>`` for each figure, ``audited_robust_acc``
    (the figure that replaces its score), tags ``obfuscated`` and ``obfuscated_reason``, ``audit.json``."""
    # The metrics last: a resumed search takes a run holding ``audited_robust_acc`` as audited, so
    # the verdict and audit.json must be there before it.
    client.log_dict(run_id, audit, "audit.json")
    client.set_tag(run_id, "obfuscated", "true" if audit["reasons"] else "false")
    if audit["reasons"]:
        client.set_tag(run_id, "obfuscated_reason", "; ".join(audit["reasons"]))
    now = int(time.time() * 1000)
    metrics = [Metric(f"{AUDIT_PREFIX}{k}", float(v), now, 0) for k, v in audit["metrics"].items()]
    metrics.append(Metric(AUDITED, float(audit["metrics"]["robust_acc"]), now, 0))
    client.log_batch(run_id, metrics=metrics)


def trial_error(trial) -> str:
    """The trial's error trace. Ray writes it into the driver's copy of the trial folder and syncs
    that to ``--storage`` later; ``Trial.get_error`` reads storage and can find nothing yet."""
    local = trial.error_file
    if local and os.path.isfile(local):
        return Path(local).read_text(encoding="utf-8", errors="replace")
    return trial.get_error() or "the trial failed without an error message"


def last_step(client: MlflowClient, run_id: str) -> int:
    """The last step a trial run logged (0 if none): every report carries ``time_total_s``."""
    return max((m.step for m in client.get_metric_history(run_id, "time_total_s")), default=0)


def lost_runs(client: MlflowClient, experiment_id: str, parent_id: str, trials, runs: list | None = None) -> list:
    """FINISHED trial runs whose trial Ray does not know: the driver died after the trial ended
    and before Ray saved its experiment state (every ~10 s). ``runs``: the search's child runs,
    when already read."""
    known = {t.trial_id for t in trials}
    runs = child_runs(client, experiment_id, parent_id) if runs is None else runs
    return [run for run in runs if run.info.status == "FINISHED" and run.data.tags.get(TRIAL_TAG) not in known]


def recorded_results(client: MlflowClient, experiment_id: str, parent_id: str) -> Recorded:
    """What a resumed search's trials report instead of running again: the final metrics of every
    FINISHED trial run, by trial id and by configuration, and the values each was proposed with,
    in the order the trials started."""
    by_trial, by_config, sampled = {}, [], []
    for run in sorted(child_runs(client, experiment_id, parent_id), key=lambda r: r.info.start_time):
        if run.info.status != "FINISHED" or TRIAL_TAG not in run.data.tags:
            continue
        # The trial's own reports only: an audit is the driver's, read again from the run after the trials.
        metrics = {k: v for k, v in run.data.metrics.items() if k not in TUNE_KEYS and k != "time_total_s"
                   and not k.startswith(AUDIT_PREFIX) and k != AUDITED}
        # A recorded trial reports once: whether the scheduler had stopped it is on the run, not in Ray.
        metrics[STOPPED_METRIC] = float(STOPPED_TAG in run.data.tags)
        if "passes" in metrics:  # a count, logged as MLflow's float
            metrics["passes"] = int(metrics["passes"])
        by_trial[run.data.tags[TRIAL_TAG]] = metrics
        by_config.append((dict(run.data.params), metrics))
        if SAMPLED_TAG in run.data.tags:
            sampled.append((run.data.tags[TRIAL_TAG], json.loads(run.data.tags[SAMPLED_TAG])))
    return Recorded(by_trial, tuple(by_config), tuple(sampled))


def close_interrupted(client: MlflowClient, experiment_id: str, parent_id: str) -> int:
    """Mark child runs still RUNNING (their trial never finished) KILLED; returns how many."""
    count = 0
    for run in child_runs(client, experiment_id, parent_id):
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status="KILLED")
            count += 1
    return count


__all__ = ["MlflowException", "RunStatus", "close_interrupted", "connect", "resolve_tracking_uri"]
