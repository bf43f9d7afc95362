"""The Tune callback that logs every trial to MLflow from the driver: its child run, params,
per-report metrics, status and checkpoint.

One driver carries every trial of a search, so a trial costs it few requests, and few of them
wait: the run is created with its tags and whole configuration (one request, on the driver's
thread: the run id comes back); its params and reports wait on the driver and are written
together by the first report that comes ``FLUSH_SECONDS`` or more after the run's last write, and
always before the run is marked FINISHED or FAILED (one request for a trial whose reports come
faster than that, as post-hoc chunks do on a GPU; one a report for slower ones, as training
epochs); its end sets the status (one). Every write after the creation goes through
:class:`~search.ordered_writes.OrderedWrites`: one the store refuses is kept and sent again with the
run's next write, the run's later ones after it, and the driver goes on. The runs a resumed driver must find again are read
once, not searched for per trial. A driver killed between flushes loses the last seconds of
reports of trials that were still running, which a resumed search runs again; a FINISHED run
always holds every figure. (MLflow's asynchronous logging was tried: its queue flushes about once
a second, so waiting for a trial's writes before marking it FINISHED cost a second a trial.)
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from ray import tune

from smoothblock import Config
from trainables.params import config_params, trial_config

from .ordered_writes import OrderedWrites
from .tracking import (_FULL_URIS, CONFIG_TAG, PARENT_TAG, ROLE_TAG, SAMPLED_TAG, STOPPED_TAG, TRIAL_TAG, TUNE_KEYS,
                       child_runs, close_interrupted, last_step, lost_runs, redact, run_label, trial_error)

#: The longest a running trial's reports wait on the driver before they are written to MLflow.
FLUSH_SECONDS = 5.0


class TrialLogger(tune.Callback):
    """Tune callback: each trial's child run, its params, per-report metrics, status and artifacts."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_id: str, base: Config,
                 max_iterations: int | None = None, tags: dict[str, str] | None = None) -> None:
        """On resume, a new trial whose configuration equals that of a run FINISHED after Ray's
        last saved state takes that run over (trials are seeded: the trial reports that run's
        result instead of running, see ``trainables.recorded.Recorded``)."""
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_id = parent_id
        self.base = base
        self.max_iterations = max_iterations  # reports of a trial that runs to the end
        self.tags = dict(tags or {})  # on every child run (search_tags)
        self._client: MlflowClient | None = None
        self._runs: dict[str, str] = {}
        self._done: set[str] = set()  # runs FINISHED before this driver: nothing more is logged to them
        # Last step each run holds: a trial restarted from an older checkpoint than MLflow saw (the
        # driver died between the two) or from scratch (a retry) reports those steps again; each
        # step is logged once, with its first values (seeded trials repeat them anyway).
        self._logged: dict[str, int] = {}
        # The runs of this search before this driver, by trial id (read once), and those a
        # previous driver finished and Ray lost.
        self._before: list | None = None
        self._by_trial: dict[str, Any] = {}
        self._lost: list | None = None
        self._params: dict[str, list[Param]] = {}  # run id -> params not yet written
        self._metrics: dict[str, list[Metric]] = {}  # run id -> reported metrics not yet written
        self._written: dict[str, float] = {}  # run id -> when its last write (or its creation) was
        self._writes: OrderedWrites | None = None

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks with the experiment state
        # What this driver holds of MLflow is read again by the next one; only the settings travel.
        return {**self.__dict__, "tracking_uri": redact(self.tracking_uri), "_client": None, "_runs": {},
                "_done": set(), "_logged": {}, "_before": None, "_by_trial": {}, "_lost": None, "_params": {},
                "_metrics": {}, "_written": {}, "_writes": None}

    @property
    def writes(self) -> OrderedWrites:
        """The run writes, in order, kept when refused."""
        if self._writes is None:
            self._writes = OrderedWrites()
        return self._writes

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=_FULL_URIS.get(self.tracking_uri, self.tracking_uri))
        return self._client

    def _earlier(self, trial_id: str):
        """The run an earlier driver (or attempt) made for ``trial_id``, or None."""
        if self._before is None:
            self._before = child_runs(self.client, self.experiment_id, self.parent_id)  # newest first
            self._by_trial = {run.data.tags.get(TRIAL_TAG): run for run in reversed(self._before)}
        return self._by_trial.get(trial_id)

    def run_id(self, trial, trials=None) -> str:
        """The trial's child run: cached, else one an earlier driver made (resume, retry), else
        adopted (see ``__init__``; ``trials``: all the search's trials), else created."""
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        found = self._earlier(trial.trial_id)
        cfg = trial_config(self.base, trial.config)
        if found is None and trials is not None:
            found = self._adopt(trial, cfg, trials)
        if found is not None:
            run_id = found.info.run_id
            if found.info.status == "FINISHED":
                self._done.add(run_id)
            else:
                if found.info.status != "RUNNING":
                    self.client.update_run(run_id, status="RUNNING")
                self._logged[run_id] = last_step(self.client, run_id)
                if not found.data.params:  # its driver died before the first write
                    self._params[run_id] = [Param(k, v[:6000]) for k, v in config_params(cfg).items()]
        else:
            run = self.client.create_run(self.experiment_id, run_name=run_label(cfg),
                                         tags={PARENT_TAG: self.parent_id, TRIAL_TAG: trial.trial_id,
                                               ROLE_TAG: "trial", SAMPLED_TAG: json.dumps(trial.config, sort_keys=True),
                                               CONFIG_TAG: cfg.to_yaml(), **self.tags})
            run_id = run.info.run_id
            self._params[run_id] = [Param(k, v[:6000]) for k, v in config_params(cfg).items()]
            self._written[run_id] = time.monotonic()
        self._runs[trial.trial_id] = run_id
        return run_id

    def _adopt(self, trial, cfg: Config, trials):
        """A FINISHED run that Ray lost and whose configuration is the trial's, retagged as its run."""
        if self._lost is None:
            self._lost = lost_runs(self.client, self.experiment_id, self.parent_id, trials, runs=self._before)
        params = config_params(cfg)
        found = next((run for run in self._lost if run.data.params == params), None)
        if found is not None:
            self._lost.remove(found)
            self.client.set_tag(found.info.run_id, "ray.trial_id_before_resume", found.data.tags[TRIAL_TAG])
            self.client.set_tag(found.info.run_id, TRIAL_TAG, trial.trial_id)
        return found

    def _flush(self, run_id: str) -> None:
        """Write the run's params and reports held so far."""
        self._written[run_id] = time.monotonic()
        self.writes.submit(run_id, self._send_held, run_id)

    def _send_held(self, run_id: str) -> None:
        """The run's params and reports not yet written, in as few requests as MLflow's batch limits
        allow (one, for a trial's configuration and its five reports)."""
        params, metrics = self._params.pop(run_id, []), self._metrics.pop(run_id, [])
        while params or metrics:
            # At most 100 params and 1,000 items in all per batch.
            batch_params, batch_metrics = params[:100], metrics[:1000 - len(params[:100])]
            try:
                self.client.log_batch(run_id, metrics=batch_metrics, params=batch_params)
            except Exception:
                # Kept for the next write (a later report, the trial's end), not lost with the
                # request; ahead of what the driver held meanwhile.
                self._params[run_id] = params + self._params.get(run_id, [])
                self._metrics[run_id] = metrics + self._metrics.get(run_id, [])
                raise
            params, metrics = params[len(batch_params):], metrics[len(batch_metrics):]

    def _end(self, run_id: str, status: str) -> None:
        """Every figure, then the status that says the run is complete."""
        self._send_held(run_id)
        self.client.set_terminated(run_id, status=status)

    def _log_checkpoint(self, run_id: str, checkpoint) -> None:
        with checkpoint.as_directory() as folder:
            self.client.log_artifacts(run_id, folder, "checkpoint")

    def flush(self) -> None:
        """Write everything held, and once more what was refused; raise the first error left."""
        for run_id in set(self._params) | set(self._metrics):
            self._flush(run_id)
        if self._writes is not None:
            self._writes.drain()

    def on_trial_start(self, iteration, trials, trial, **info):
        self.run_id(trial, trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self.run_id(trial, trials)
        step = int(result.get("training_iteration", 0))
        if run_id in self._done or step <= self._logged.get(run_id, 0):
            return
        now = int(result.get("timestamp", 0) * 1000) or None
        metrics = [Metric(k, float(v), now or 0, step) for k, v in result.items()
                   if k not in TUNE_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)
                   and math.isfinite(v)]
        self._metrics.setdefault(run_id, []).extend(metrics)
        self._logged[run_id] = step
        if time.monotonic() - self._written.get(run_id, 0.0) >= FLUSH_SECONDS:
            self._flush(run_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self.run_id(trial, trials)
        if run_id in self._done:
            return
        reached = int((trial.last_result or {}).get("training_iteration", 0))
        if self.max_iterations and reached < self.max_iterations:
            # ASHA stopped it; its figures rest on fewer images (posthoc) or epochs (train).
            self.writes.submit(run_id, self.client.set_tag, run_id, STOPPED_TAG,
                               f"after {reached} of {self.max_iterations} reports")
        if trial.checkpoint is not None:
            self.writes.submit(run_id, self._log_checkpoint, run_id, trial.checkpoint)
        self.writes.submit(run_id, self._end, run_id, "FINISHED")

    def on_trial_recover(self, iteration, trials, trial, **info):
        run_id = self.run_id(trial)
        self.writes.submit(run_id, self.client.set_tag, run_id, "retries", str(trial.run_metadata.num_failures))

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self.run_id(trial)
        error = trial_error(trial)
        last = [line for line in str(error).strip().splitlines() if line.strip()]
        self.writes.submit(run_id, self.client.log_text, run_id, str(error), "error.txt")
        self.writes.submit(run_id, self.client.set_tag, run_id, "error", (last[-1] if last else "error")[:5000])
        self.writes.submit(run_id, self._end, run_id, "FAILED")

    def on_experiment_end(self, trials, **info):
        self.flush()  # trials still running when the search stopped, and every queued write
        for run in lost_runs(self.client, self.experiment_id, self.parent_id, trials):
            self.client.set_tag(run.info.run_id, "smoothblock.lost", "finished after Ray's last saved state; "
                                "the resumed search ran another trial in its place")
            self.client.set_terminated(run.info.run_id, status="KILLED")
        close_interrupted(self.client, self.experiment_id, self.parent_id)


@dataclass
class _FinishedTrial:
    """What TrialLogger reads of a trial that Ray holds as finished."""

    trial_id: str
    config: dict
    last_result: dict
    checkpoint: None = None


def write_unwritten(logger: TrialLogger, grid) -> int:
    """Trials Ray holds as finished whose MLflow runs are not FINISHED (the store refused their
    writes: a full disk, a server away past MLflow's retries): their reports, from Ray's results,
    then FINISHED. ``logger``: a new one (it reads the search's runs once, and leaves the FINISHED
    ones alone); ``grid``: ``Tuner.fit``'s results. Returns how many runs it completed."""
    count = 0
    for result in grid:
        if result.error is not None or not result.metrics or "trial_id" not in result.metrics:
            continue
        frame = result.metrics_dataframe
        rows = frame.to_dict("records") if frame is not None and len(frame) else [result.metrics]
        rows = [{k: v for k, v in row.items() if "/" not in k} for row in rows]  # not the flattened config
        trial = _FinishedTrial(result.metrics["trial_id"], dict(result.config or {}), rows[-1])
        if logger.run_id(trial) in logger._done:
            continue
        for row in rows:
            logger.on_trial_result(0, [], trial, row)
        logger.on_trial_complete(0, [], trial)
        count += 1
    logger.flush()
    return count
