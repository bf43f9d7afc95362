"""Launch and resume a search: Ray Tune runs the trials, Optuna proposes them, MLflow records them."""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
import time
import warnings
from typing import Any, Sequence

import optuna
import ray
import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from smoothblock.errors import ConfigError
from smoothblock.recipes import resolve_recipe
from trainables import audit_defense, load_assets, posthoc_trial, training_trial, undefended_score
from trainables.assets import Assets, load_weights
from trainables.baseline import Baseline, gains, load_cached, store_cached
from trainables.posthoc import undefended_key
from trainables.recorded import Recorded
from trainables.scoring import SCHEDULER_METRIC

from . import plots, tracking
from .progress import TrialLines
from .faults import Where, stopped_as, watch_head
from .overlap import side_by_side
from .searcher import make_searcher, replaying
from .config import SearchConfig
from .ranking import rank
from .outcome import BASELINE_PREFIX, Outcome, log_baseline, summarize, trial_rows
from .tracking import AUDIT_PREFIX, AUDITED
from .trial_logger import TrialLogger, write_unwritten
from .storage import SEARCH_FILE, STATE_FILE, Storage, resume_tracking_uri, write_state_file

optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created in memory"
# A resumed trial reports again the step Optuna saw before the driver died (the same values, from
# MLflow); Optuna keeps the first and warns: expected on resume, not a problem to show.
warnings.filterwarnings("ignore", message="The reported value is ignored because this `step=", category=UserWarning)
logging.getLogger("mlflow").setLevel(logging.WARNING)  # not the store's table-creation notes


def make_trainable(search: SearchConfig, assets: Assets, recorded: Recorded | None = None):
    function = posthoc_trial if search.trainable == "posthoc" else training_trial
    resources = {"cpu": search.cpus_per_trial, "gpu": search.gpus_per_trial}
    return tune.with_resources(tune.with_parameters(function, search=search, assets=assets, recorded=recorded),
                               resources)


def _load_assets(search: SearchConfig, weights=None) -> Assets:
    # The search's validation images, then the audit's fresh ones after them.
    images = search.val_images + (search.audit_images if search.audit_top else 0)
    return load_assets(search.trainable, search.base, search.model, images, search.attacks,
                       search.attack_settings(), search.search_seed, weights)


def _start(address: str | None, verbose: bool, where: Where, *steps) -> list[Any]:
    """Ray's start (or connection) and ``steps`` side by side (:func:`side_by_side`); the steps'
    results. A search that cannot start stops the local Ray it started; one on a cluster ends in
    one line if the cluster's head goes (:func:`search.faults.watch_head`)."""
    started = not ray.is_initialized()
    try:
        results = side_by_side(lambda: init_ray(address, verbose), *steps)[1:]
    except BaseException:
        if started and ray.is_initialized():
            ray.shutdown()
        raise
    if address is not None:
        watch_head(ray.get_runtime_context().gcs_address, where)
    return results


def init_ray(address: str | None, verbose: bool = False) -> None:
    """Connect to the cluster at ``address`` ("auto" or HOST:PORT), else start a local Ray. Without
    ``verbose``, the workers' output and Ray's warnings stay out of the terminal (trial errors are
    still reported, and recorded in MLflow)."""
    if not verbose:
        # Tune reports a failed trial (its traceback, a lost node's) as ERROR records: the trial
        # lines say what failed and why (search.progress), and MLflow keeps the trace.
        for name in ("ray", "ray.tune", "ray.train"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    # What the raylets and the autoscaler publish to the driver (a dead worker's message, a node's
    # state dump, "(autoscaler +3s) ..." lines) is printed by Ray's driver-side listener, not
    # through logging; this one switch (what Ray's debugger uses to pause the same output) turns it
    # off. Private: a Ray without it is caught by test_cluster's no-internals check.
    import ray._private.worker as ray_worker

    ray_worker._worker_logs_enabled = verbose
    # Tune's newer output prints its experiment table even at verbose 0; the older one is silent.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "1" if verbose else "0"
    if ray.is_initialized():
        return
    if address is None:
        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING, log_to_driver=verbose)
        return
    if address != "auto":
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--address must be auto or HOST:PORT, got {address!r}")
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError as exc:
            raise ConfigError(f"Ray cluster at {address} is unreachable: {exc.strerror or exc}") from None
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=verbose)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"cannot connect to the Ray cluster at {address}: {str(exc).splitlines()[0]}") from None


def check_resources(search: SearchConfig) -> int:
    """Refuse trials the cluster can never run; returns how many fit at once.

    An autoscaling cluster counts what its configuration could start (GPU workers may number
    zero until trials ask for them); a fixed cluster or a local Ray counts what it has.
    """
    total = ray.cluster_resources()
    ceiling = _autoscaling_ceiling()
    cpus, gpus = (max(total.get(k, 0), ceiling.get(k, 0)) for k in ("CPU", "GPU"))
    if search.gpus_per_trial > 0 and gpus == 0:
        raise ConfigError(f"gpus_per_trial is {search.gpus_per_trial} but the Ray cluster has no GPUs")
    if search.gpus_per_trial > gpus or search.cpus_per_trial > cpus:
        raise ConfigError(f"a trial asks for {search.cpus_per_trial} CPUs and {search.gpus_per_trial} GPUs; "
                          f"the cluster has {cpus:g} and {gpus:g}")
    fits = [math.floor(cpus / search.cpus_per_trial) if search.cpus_per_trial else math.inf,
            math.floor(gpus / search.gpus_per_trial) if search.gpus_per_trial else math.inf]
    return max(1, int(min(fits + [search.trials])))


def _autoscaling_ceiling() -> dict[str, float]:
    """The most of each resource the cluster's autoscaler could provide ({} without an autoscaler).

    Ray Train checks its workers against the same figure; Ray offers it only from its private
    state module, so any failure there means "no autoscaler known"."""
    try:
        from ray._private.state import state

        return dict(state.get_max_resources_from_cluster_config() or {})
    except Exception:
        return {}


def score_baseline(search: SearchConfig, assets: Assets) -> Assets:
    """A posthoc search's reference point: the trained model without defense under the same attacks,
    images and seeds. Read from the driver's cache when scored so before on the trials' kind of
    device; else scored before the trials as a Ray task (on a GPU worker where the trials run on
    one; a CPU search gives it a whole node's CPUs, since nothing else runs yet) and kept in the
    driver's cache too. The assets come back holding it, so every trial reports its gain over it;
    the parent run gets its figures (``undefended_clean_acc``, ...)."""
    if search.trainable != "posthoc" or assets.state_dict is None:
        return assets
    on_gpu = search.gpus_per_trial > 0 and assets.base.device != "cpu"
    key = undefended_key(search, assets, torch.device("cuda" if on_gpu else "cpu"))
    baseline = load_cached(key, assets.base.cache_dir)
    if baseline is None:
        cpus = search.cpus_per_trial if on_gpu else max(search.cpus_per_trial, _largest_node_cpus())
        task = ray.remote(undefended_score).options(num_cpus=cpus, num_gpus=search.gpus_per_trial)
        baseline = ray.get(task.remote(search, assets, threads=None if on_gpu else max(1, int(cpus))))
        store_cached(key, assets.base.cache_dir, baseline)
    return dataclasses.replace(assets, baseline=baseline)


def _largest_node_cpus() -> float:
    """The most CPUs one live node of the cluster has."""
    return max((node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node.get("Alive")), default=1.0)


def launch(search: SearchConfig, *, address: str | None = None, mlflow_uri: str | None = None,
           storage: str | None = None, verbose: bool = False, callbacks: Sequence[tune.Callback] = ()) -> Outcome:
    """Run a new search. Every input is checked before anything is created. ``verbose``: Ray Tune's
    own per-trial tables, the workers' output and Ray's warnings, instead of one line per trial.
    ``callbacks``: more Ray Tune callbacks, beside the search's MLflow logger."""
    name = search.name or f"{search.trainable}-{time.strftime('%Y%m%d-%H%M%S')}"
    store = Storage.from_arg(storage)
    uri = tracking.resolve_tracking_uri(mlflow_uri)
    # A fault from here on (not bad input) ends in one line (search.faults); --resume goes on from
    # what was kept once the configuration is written.
    where = Where.of(name, store.folder(name), tracking.redact(uri), storage, address)
    with stopped_as(where, lambda: store.exists(name, SEARCH_FILE)):
        return _launch(search.replace(name=name), store, uri, address, verbose, callbacks, where)


def _launch(search: SearchConfig, store: Storage, uri: str, address: str | None, verbose: bool,
            callbacks: Sequence[tune.Callback], where: Where) -> Outcome:
    name = search.name

    # The weights are checked first (a file that is not a checkpoint starts nothing); then the
    # tracking store, the images and Ray come up at once.
    weights = load_weights(search.base, search.model)
    client, assets = _start(address, verbose, where, lambda: tracking.connect_new(uri, name, store.exists(name)),
                            lambda: _load_assets(search, weights))
    concurrent = search.max_concurrent_trials or check_resources(search)
    assets = score_baseline(search, assets)
    # The configuration is written first: a driver killed from here on leaves a search --resume completes.
    search_yaml = search.to_yaml()
    store.write_text(name, SEARCH_FILE, search_yaml)
    try:
        experiment_id, parent_id = tracking.start_search_run(client, name, search_yaml,
                                                             tracking.search_params(search), tracking.search_tags(search))
        write_state_file(store, name, uri, experiment_id, parent_id)
        baseline = log_baseline(client, parent_id, assets)
        tuner = _new_tuner(search, assets, store, uri, experiment_id, parent_id, concurrent, verbose=verbose,
                           callbacks=callbacks)
    except BaseException:
        experiment = tracking.find_experiment(client, name)
        if experiment is not None:
            client.delete_experiment(experiment.experiment_id)
        store.remove(name)
        raise
    return _finish(tuner, search, assets, client, uri, experiment_id, parent_id, store.folder(name), baseline)


def resume(name: str, *, address: str | None = None, mlflow_uri: str | None = None,
           storage: str | None = None, verbose: bool = False) -> Outcome:
    """Finish an interrupted search: finished trials stay, interrupted ones go on from their checkpoints.

    Whenever the driver died, there is something to go on from: Ray's saved experiment state
    (``Tuner.restore``); or, killed before Ray's first save of it, the search's own files (a new Tuner
    under the same name); or, killed before even those, its MLflow parent run, which holds the
    configuration; or, killed before that run was complete, the configuration file written first.
    Trials MLflow holds as FINISHED report that result instead of running again.
    """
    store = Storage.from_arg(storage)
    uri = resume_tracking_uri(store, name, mlflow_uri)
    where = Where.of(name, store.folder(name), tracking.redact(uri), storage, address)
    with stopped_as(where, lambda: True):
        return _resume(name, store, uri, address, verbose, where)


def _resume(name: str, store: Storage, uri: str, address: str | None, verbose: bool, where: Where) -> Outcome:
    folder = store.folder(name)
    client = tracking.connect(uri)
    stored = None
    if store.exists(name, SEARCH_FILE):
        stored = SearchConfig.from_yaml(store.read_text(name, SEARCH_FILE), source=f"{folder}/{SEARCH_FILE}")
    try:
        experiment_id, parent_id = tracking.reopen_search_run(client, name)
    except ConfigError:
        if stored is None:
            raise ConfigError(f"no search named {name!r} to resume in {tracking.redact(uri)} or under {store}") from None
        # Killed while launching, after writing its configuration but before its MLflow parent run
        # was complete: complete that now.
        experiment_id, parent_id = tracking.start_search_run(client, name, stored.to_yaml(),
                                                             tracking.search_params(stored), tracking.search_tags(stored))
    search = stored
    if search is None:
        search = SearchConfig.from_yaml(tracking.search_yaml(client, parent_id), source=f"search {name!r} in MLflow")
        store.write_text(name, SEARCH_FILE, search.to_yaml())
    if not store.exists(name, STATE_FILE):
        write_state_file(store, name, uri, experiment_id, parent_id)
    weights = load_weights(search.base, search.model)
    (assets,) = _start(address, verbose, where, lambda: _load_assets(search, weights))
    concurrent = search.max_concurrent_trials or check_resources(search)
    assets = score_baseline(search, assets)
    baseline = log_baseline(client, parent_id, assets)
    recorded = tracking.recorded_results(client, experiment_id, parent_id)
    # Ray writes tuner.pkl before its first experiment state: a driver killed between the two leaves
    # a folder Tuner.restore accepts but cannot resume (it fails to restore the run state, then
    # waits for trials its searcher no longer proposes). Only a saved experiment state restores.
    if tune.Tuner.can_restore(folder) and store.has_match(name, "experiment_state-*.json"):
        return _restore_and_finish(search, assets, recorded, client, uri, experiment_id, parent_id, folder,
                                   baseline)
    # Ray saved nothing before the driver died: a new Tuner proposes the finished trials' values
    # first (Optuna learns them again; each reports its recorded result), then goes on.
    redo = [*recorded.points, *(p for p in search.points_to_evaluate if p not in recorded.points)]
    tuner = _new_tuner(search.replace(points_to_evaluate=redo), assets, store, uri, experiment_id,
                       parent_id, concurrent, recorded, verbose=verbose)
    return _finish(tuner, search, assets, client, uri, experiment_id, parent_id, folder, baseline)


def _restore_and_finish(search: SearchConfig, assets, recorded, client, uri: str, experiment_id: str,
                        parent_id: str, folder: str, baseline) -> Outcome:
    """Resume from Ray's saved experiment state (``Tuner.restore``) and run the search to its end."""
    # Restoring reads every trial's results; those the killed driver had not yet recorded have
    # none, which Ray reports as a warning although resuming them is exactly what follows.
    analysis_log = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = analysis_log.level
    analysis_log.setLevel(logging.ERROR)
    try:
        tuner = tune.Tuner.restore(folder, trainable=make_trainable(search, assets, recorded),
                                   resume_unfinished=True, resume_errored=False, restart_errored=False)
    finally:
        analysis_log.setLevel(level)
    # Trials finished after Ray's last save: the restored searcher proposes their values first.
    with replaying([(trial_id, search.space.encode_point(point, search.base))
                    for trial_id, point in recorded.sampled]):
        return _finish(tuner, search, assets, client, uri, experiment_id, parent_id, folder, baseline)


def _new_tuner(search: SearchConfig, assets: Assets, store: Storage, uri: str, experiment_id: str,
               parent_id: str, concurrent: int, recorded: Recorded | None = None, *,
               verbose: bool = False, callbacks: Sequence[tune.Callback] = ()) -> tune.Tuner:
    return tune.Tuner(
        make_trainable(search, assets, recorded),
        tune_config=_tune_config(search, concurrent),
        run_config=tune.RunConfig(
            name=search.name, storage_path=store.uri, verbose=1 if verbose else 0,
            failure_config=tune.FailureConfig(max_failures=search.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=[TrialLogger(uri, experiment_id, parent_id, assets.base, max_iterations(search),
                                            tracking.search_tags(search)),
                       *([] if verbose else [TrialLines(assets.base, search.trials, search.metric,
                                                        max_iterations(search))]), *callbacks]))


def _tune_config(search: SearchConfig, concurrent: int) -> tune.TuneConfig:
    scheduler = None
    if search.scheduler == "asha":
        # Rungs over epochs (train) or over chunks of validation images (posthoc: multi-fidelity).
        max_t = max_iterations(search)
        if max_t > 1:
            scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max_t,
                                      grace_period=min(search.grace_period, max_t),
                                      reduction_factor=search.reduction_factor, metric=SCHEDULER_METRIC, mode="max")
    # Optuna has its objectives (make_searcher) and ASHA its metric: Tune itself needs none.
    return tune.TuneConfig(search_alg=make_searcher(search), scheduler=scheduler, num_samples=search.trials,
                           max_concurrent_trials=concurrent, reuse_actors=True)


def _finish(tuner, search, assets, client, uri, experiment_id, parent_id, folder, baseline) -> Outcome:
    status = "FAILED"
    try:
        grid = tuner.fit()
        # Trials Ray finished whose runs MLflow did not take (an earlier driver's writes refused or
        # cut off by its end): written now from Ray's results, so each trial has one FINISHED run.
        write_unwritten(TrialLogger(uri, experiment_id, parent_id, assets.base, max_iterations(search),
                                    tracking.search_tags(search)), grid)
        rows = trial_rows(grid, max_iterations(search))
        audit_finalists(search, assets, client, experiment_id, parent_id, rows)
        summarize(client, parent_id, search, rows)
        try:
            plots.log_search_plots(client, search, experiment_id, parent_id)
        except Exception as exc:  # noqa: BLE001 - pictures are worth a warning, not the search
            logging.getLogger(__name__).warning("the search's plots were not logged: %s", exc)
        status = "FINISHED"
    finally:
        tracking.close_interrupted(client, experiment_id, parent_id)
        client.set_terminated(parent_id, status=status)
    return Outcome(search, tracking.redact(uri), experiment_id, parent_id, folder, rows, baseline)


def max_iterations(search: SearchConfig) -> int:
    """Reports of a trial that runs to the end: epochs (train) or chunks of images (posthoc)."""
    return resolve_recipe(search.base).epochs if search.trainable == "train" else search.chunks


def audit_finalists(search: SearchConfig, assets: Assets, client, experiment_id: str, parent_id: str,
                    rows: list[dict[str, Any]]) -> None:
    """Audit the ``audit_top`` best feasible trials that ran to the end (:mod:`smoothblock.audit`) on
    ``audit_images`` fresh validation images, and (posthoc) the undefended base on the same images, as
    Ray tasks in parallel; each finalist's gain over the base there, with its paired interval, is part
    of its audit (``audit_robust_gain``, ``audit_robust_gain_low``, ...). Record each audit on the trial's
    run (``audit_*`` metrics, ``audited_robust_acc``, tags ``obfuscated`` and ``obfuscated_reason``,
    ``audit.json``) and in its row; the base's on the parent run (``undefended_audit_*``). A resumed
    search keeps the audits its runs hold."""
    if search.audit_top == 0:
        return
    complete = [r for r in rows if r["status"] == "TERMINATED" and search.metric in r and not r["stopped_early"]
                and r["clean_acc"] >= (search.min_clean_acc or 0.0)
                and (search.trainable == "posthoc" or r["checkpoint"] is not None)]
    finalists = rank(complete, search.metric, search.min_clean_acc)[:search.audit_top]
    runs = {r["trial_id"]: tracking.trial_run(client, experiment_id, parent_id, r["trial_id"]) for r in finalists}
    task = ray.remote(audit_defense).options(num_cpus=search.cpus_per_trial, num_gpus=search.gpus_per_trial)
    shared = ray.put(assets)
    pending = {r["trial_id"]: task.remote(r, search, shared, r["checkpoint"]) for r in finalists
               if runs[r["trial_id"]] is None or AUDITED not in runs[r["trial_id"]].data.metrics}
    base = task.remote({"method": "none"}, search, shared) if pending and assets.baseline is not None else None
    base_result = ray.get(base) if base is not None else None
    if base_result is not None:
        tracking.log_metrics(client, parent_id, {f"{BASELINE_PREFIX}{AUDIT_PREFIX}{k}": v
                                                 for k, v in base_result["metrics"].items()})
    for row in finalists:
        run = runs[row["trial_id"]]
        if row["trial_id"] in pending:
            result = ray.get(pending[row["trial_id"]])
            outcomes = result.pop("outcomes")
            if base_result is not None:
                result["metrics"].update(fresh_gains(outcomes, base_result["outcomes"]))
            metrics, reasons = result["metrics"], result["reasons"]
            if run is not None:
                tracking.log_audit(client, run.info.run_id, result)
        else:
            metrics = {k[len(AUDIT_PREFIX):]: v for k, v in run.data.metrics.items() if k.startswith(AUDIT_PREFIX)}
            reasons = [x for x in run.data.tags.get("obfuscated_reason", "").split("; ") if x]
        row[AUDITED] = metrics["robust_acc"]
        row["obfuscated"] = bool(reasons)
        row["audit_reasons"] = reasons
        row["audit"] = metrics


def fresh_gains(outcomes: dict[str, Any], base: dict[str, Any]) -> dict[str, float]:
    """A finalist's gain over the base on the fresh images (the per-image outcomes of both audits)."""
    return gains(outcomes["clean"], outcomes["robust"], Baseline({}, base["clean"], base["robust"]))
