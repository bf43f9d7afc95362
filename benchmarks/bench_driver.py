"""What one trial costs the search's driver: Optuna's proposal and MLflow's records, per trial.

Every trial, however many GPU workers run them, passes through the one driver: Optuna proposes it
(TPE, whose cost grows with the trials it has seen) and learns its result; the MLflow logger
creates its run (tags and configuration in the one request), logs its parameters and reports in
one batch and closes it. When the workers
together finish trials faster than the driver handles them, the driver is the bottleneck; this
measures where.

Protocol: the ``posthoc`` preset's search (its space, TPE sampler, seed 0).
1. Optuna: ``--trials`` trials through the search's own ``OptunaSearch`` (``suggest`` then
   ``on_trial_complete`` with made-up metrics); the median seconds per trial in each band of trial
   numbers (1-50, 51-200, ...).
2. MLflow: the search's own ``TrialLogger`` (Tune callback) for ``--mlflow_trials`` trials of 5
   reports each (the preset's chunks), against a real ``mlflow server`` on 127.0.0.1 (sqlite
   backend) and against a local sqlite store: the wall time from the first trial's start until
   every trial's writes have landed, per trial, and trials an hour at that cost; beside it the
   median time a trial's callbacks keep the driver waiting.

Run: python benchmarks/bench_driver.py [--trials 1000] [--mlflow_trials 50] [--json OUT]
     python benchmarks/bench_driver.py --smoke   (a few trials: it runs, no figures)
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from search import compose  # first: it sets Ray's authentication mode
from search.tracking import connect, start_search_run
from search.trial_logger import TrialLogger
from search.searcher import make_searcher

BANDS = (50, 200, 500, 1000, 2000)


def optuna_costs(trials: int) -> dict:
    search = compose("posthoc", trials=trials)
    searcher = make_searcher(search)
    rng = random.Random(0)
    seconds = []
    for i in range(trials):
        started = time.perf_counter()
        searcher.suggest(f"t{i}")
        searcher.on_trial_complete(f"t{i}", {"robust_acc": rng.random() * 0.2, "clean_acc": 0.5 + rng.random() * 0.4})
        seconds.append(time.perf_counter() - started)
    bands, low = {}, 0
    for high in BANDS:
        if low >= trials:
            break
        bands[f"{low + 1}-{min(high, trials)}"] = round(statistics.median(seconds[low:high]), 4)
        low = high
    return {"trials": trials, "median_s_per_trial": bands}


@dataclass
class StandInTrial:
    """What TrialLogger reads of a Tune trial."""

    trial_id: str
    config: dict
    last_result: dict = field(default_factory=dict)
    checkpoint: None = None


def mlflow_costs(uri: str, trials: int, reports: int = 5) -> tuple[float, float]:
    """Seconds a trial: the driver's own (the median of its callbacks' time, what it waits for) and
    in all (every trial's writes landed, the last queued ones included: wall time / trials)."""
    client = connect(uri)
    search = compose("posthoc")
    name = f"driver-{time.time_ns()}"
    experiment_id, parent_id = start_search_run(client, name, search.to_yaml(), {"trials": str(trials)})
    logger = TrialLogger(uri, experiment_id, parent_id, search.base, max_iterations=reports)
    point = dict(search.points_to_evaluate[0])
    seconds, began = [], time.perf_counter()
    for i in range(trials):
        trial = StandInTrial(f"trial{i:05d}", point)
        started = time.perf_counter()
        logger.on_trial_start(0, [trial], trial)
        for step in range(1, reports + 1):
            result = {"training_iteration": step, "timestamp": time.time(), "robust_acc": 0.1, "clean_acc": 0.8,
                      "transfer_acc": 0.3, "pgd_broke": 0.1, "eot_pgd_broke": 0.05, "images": 100 * step,
                      "robust_images": 100 * step, "passes": 1, "asha_score": 0.1008}
            trial.last_result = result
            logger.on_trial_result(0, [trial], trial, result)
        logger.on_trial_complete(0, [trial], trial)
        seconds.append(time.perf_counter() - started)
    getattr(logger, "flush", lambda: None)()  # what the store refused once, sent again (older loggers: none)
    return round(statistics.median(seconds), 4), round((time.perf_counter() - began) / trials, 4)


def mlflow_server(root: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                             f"sqlite:///{root / 'server.db'}", "--artifacts-destination", str(root / "artifacts"),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=root)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return proc, uri
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("bench_driver: the mlflow server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000, help="trials through Optuna")
    parser.add_argument("--mlflow_trials", type=int, default=50, help="trials through the MLflow logger")
    parser.add_argument("--smoke", action="store_true", help="a few trials: checks that it runs")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.smoke:
        args.trials, args.mlflow_trials = 12, 2
    report = {"machine": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d"),
              "optuna": optuna_costs(args.trials)}
    with tempfile.TemporaryDirectory() as tmp:
        proc, uri = mlflow_server(Path(tmp))
        try:
            wait, each = mlflow_costs(uri, args.mlflow_trials)
            report.update(mlflow_server_s_per_trial=each, mlflow_server_trials_per_hour=round(3600 / each),
                          mlflow_server_driver_wait_s_per_trial=wait)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        wait, each = mlflow_costs(f"sqlite:///{Path(tmp) / 'local.db'}", args.mlflow_trials)
        report.update(mlflow_sqlite_s_per_trial=each, mlflow_sqlite_trials_per_hour=round(3600 / each),
                      mlflow_sqlite_driver_wait_s_per_trial=wait)
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
