"""What survives what, on a real multi-node Ray cluster started on this machine.

``ray.cluster_utils.Cluster`` starts a head (no CPUs: trials never run beside the driver) and two
worker nodes of one CPU each, every one a real raylet; results and checkpoints go to a folder
every node reaches (the role of s3:// on a real cluster). MLflow is a real server on 127.0.0.1.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
import yaml
from mlflow import MlflowClient
from ray import tune
from ray.cluster_utils import Cluster

from search.cli import main

from .conftest import make_image_folder
from .search_fixtures import tiny_checkpoint

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(ray_home):
    """Head (0 CPUs) + two 1-CPU worker nodes, with node deaths noticed within seconds."""
    if ray.is_initialized():
        ray.shutdown()
    nodes = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}})
    for _ in range(2):
        nodes.add_node(num_cpus=1)
    nodes.wait_for_nodes()
    yield nodes
    ray.shutdown()
    nodes.shutdown()


@pytest.fixture(scope="module")
def more_images(tmp_path_factory):
    """300 training images: enough that an epoch lasts long enough to kill a node during a trial."""
    return make_image_folder(tmp_path_factory.mktemp("more-data"), per_class=(30, 2))


def _write(path: Path, data: dict) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _children(client: MlflowClient, name: str):
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000) if experiment else []
    return [r for r in runs if r.data.tags.get("smoothblock.role") == "trial"]


def _ancestors(pid: int) -> set[int]:
    found = set()
    while pid > 1:
        status = Path(f"/proc/{pid}/status").read_text()
        pid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        found.add(pid)
    return found


def _node_of(cluster: Cluster, pid: int):
    """The worker node whose raylet started the process ``pid`` (a trial's actor)."""
    ancestors = _ancestors(pid)
    for node in cluster.worker_nodes:
        if node.all_processes["raylet"][0].process.pid in ancestors:
            return node
    return None


def test_a_worker_node_killed_mid_trial_resumes_the_trial_from_its_checkpoint_on_another_node(
        tmp_path, more_images, mlflow_server, cluster, capfd):
    storage = tmp_path / "results"
    config = _write(tmp_path / "train.yaml", {
        "trainable": "train", "model": None, "trials": 2, "val_images": 20, "attacks": ["fgsm"], "audit_top": 0,
        "max_concurrent_trials": 2, "max_failures": 2, "grace_period": 4,
        "base": {"data": str(more_images), "val_size": 20, "epochs": 4, "batch_size": 32, "device": "cpu",
                 "bf16": False, "method": "smoothblock", "defense_at": "both"},
        "space": {"keep_prob": {"low": 0.6, "high": 0.9}}})
    killed: dict = {}

    def kill_a_node_once_a_trial_has_checkpointed():
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            for checkpoint in (storage / "nodes").glob("*/checkpoint_000000"):
                try:
                    first = json.loads((checkpoint.parent / "result.json").read_text().splitlines()[0])
                    node = _node_of(cluster, first["pid"])
                except (OSError, IndexError, ValueError, StopIteration):
                    continue  # still being written
                if node is not None:
                    killed.update(trial_id=first["trial_id"], pid=first["pid"], at=time.time())
                    cluster.remove_node(node, allow_graceful=False)
                    return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_a_node_once_a_trial_has_checkpointed, daemon=True)
    killer.start()
    try:
        assert main(["search", "--config", config, "--name", "nodes", "--address", cluster.address,
                     "--mlflow-uri", mlflow_server, "--storage", str(storage)]) == 0
    finally:
        killer.join(timeout=60)
        ray.shutdown()
    assert killed, "no trial checkpointed on a worker node"
    assert len(cluster.worker_nodes) == 1  # the trial finished on the node that was left
    # What the user read: the lost node in one trial line, nothing of Ray's (no traceback, no
    # raylet message or state dump, no actor error, no C++ log line).
    out, err = capfd.readouterr()
    assert f"trial {killed['trial_id']}: " in out and "(retried: its node was lost" in out, out
    for internal in ("Traceback", "[state-dump]", "(raylet", "(autoscaler", "ActorDiedError", "ActorUnavailableError",
                     "RayActorError", ".cc:"):
        assert internal not in out + err, (internal, (out + err)[-4000:])

    trials = tune.ExperimentAnalysis(str(storage / "nodes")).trials
    assert len(trials) == 2 and {t.status for t in trials} == {"TERMINATED"}
    victim = next(t for t in trials if t.trial_id == killed["trial_id"])
    assert victim.run_metadata.num_failures == 1
    folder = next((storage / "nodes").glob(f"*_{victim.trial_id}_*"))
    results = [json.loads(line) for line in (folder / "result.json").read_text().splitlines()]
    restart = next(i for i, r in enumerate(results) if r["pid"] != killed["pid"])  # another process
    before = [r["training_iteration"] for r in results[:restart]]
    after = [r["training_iteration"] for r in results[restart:]]
    assert before == list(range(1, len(before) + 1))
    # Resumed from a checkpoint, not from scratch: the new process starts past iteration 1 and goes
    # on to the end. It may repeat the killed node's last iteration: Tune restores the newest
    # checkpoint the driver had registered, and the node can die after reporting the next one.
    assert 2 <= after[0] <= len(before) + 1 and after == list(range(after[0], 5))

    client = MlflowClient(mlflow_server)
    children = _children(client, "nodes")
    assert len(children) == 2 and {c.info.status for c in children} == {"FINISHED"}
    run = next(c for c in children if c.data.tags["ray.trial_id"] == killed["trial_id"])
    assert run.data.tags["retries"] == "1"
    # Resumed from the checkpoint, not from scratch: the training log's epoch keeps counting
    # (from scratch it would read 1 again at the step after the kill), and no epoch is logged twice.
    history = client.get_metric_history(run.info.run_id, "epoch")
    assert [(m.step, m.value) for m in history] == [(k, float(k)) for k in range(1, 5)]
    # The report of a search that ran on the cluster, from MLflow alone.
    report_md = tmp_path / "report.md"
    assert main(["report", "nodes", "--mlflow-uri", mlflow_server, "-o", str(report_md)]) == 0
    text = report_md.read_text()
    assert "search nodes: 2 trials finished, 0 failed" in text
    assert all(c.data.tags["ray.trial_id"] in text for c in children)


def test_a_trial_that_raises_is_retried_then_failed_with_its_error_and_the_search_goes_on(
        tmp_path, image_folder, mlflow_server, cluster, capsys):
    storage = tmp_path / "results"
    config = _write(tmp_path / "nan.yaml", {
        "trainable": "train", "model": None, "trials": 2, "val_images": 8, "attacks": ["fgsm"], "audit_top": 0,
        "max_concurrent_trials": 1, "max_failures": 1, "grace_period": 2,
        "base": {"data": str(image_folder), "val_size": 20, "epochs": 2, "batch_size": 16, "device": "cpu",
                 "bf16": False},
        # A learning rate of 1e8 drives the loss to NaN within an epoch: training raises.
        "space": {"lr": [0.01, 1.0e8]}, "points_to_evaluate": [{"lr": 1.0e8}, {"lr": 0.01}]})
    try:
        assert main(["search", "--config", config, "--name", "nan", "--address", cluster.address,
                     "--mlflow-uri", mlflow_server, "--storage", str(storage)]) == 0
    finally:
        ray.shutdown()
    assert "search nan: 1 trials finished, 1 failed" in capsys.readouterr().out
    client = MlflowClient(mlflow_server)
    children = {float(c.data.params["lr"]): c for c in _children(client, "nan")}
    assert set(children) == {0.01, 1.0e8}
    failed, finished = children[1.0e8], children[0.01]
    assert failed.info.status == "FAILED" and finished.info.status == "FINISHED"
    assert failed.data.tags["retries"] == "1"  # once more after the first failure, then FAILED
    assert "FloatingPointError: loss is nan" in failed.data.tags["error"]
    assert any(a.path == "error.txt" for a in client.list_artifacts(failed.info.run_id))
    parent = client.get_run(failed.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_failed"] == 1


@pytest.mark.parametrize("trainable", ["posthoc", "train"])
def test_the_driver_killed_at_a_random_point_resumes_to_exactly_one_finished_run_per_trial(
        tmp_path, image_folder, mlflow_server, cluster, ray_home, trainable):
    # Replay a failure with SMOOTHBLOCK_KILL_SEED=<the seed in its message>.
    seed = int(os.environ.get("SMOOTHBLOCK_KILL_SEED", random.SystemRandom().randrange(10**6)))
    rng = random.Random(seed)
    trials = 6 if trainable == "posthoc" else 4
    after_finished, jitter = rng.randrange(trials), rng.uniform(0, 1)
    why = f"seed {seed}: killed {jitter:.2f} s after {after_finished} trials finished"
    storage, name = tmp_path / "results", f"killed-{trainable}"
    if trainable == "posthoc":
        metric, search = "robust_acc", {
            "trainable": "posthoc", "model": str(tiny_checkpoint(tmp_path / "m.safetensors", image_folder)),
            "space": {"method": ["smoothblock", "dropblock"], "block_size": {"low": 1, "high": 3},
                      "keep_prob": {"low": 0.5, "high": 0.9}, "ensemble": {"low": 1, "high": 2}}}
    else:
        metric, search = "robust_acc", {
            "trainable": "train", "model": None, "attacks": ["fgsm"], "grace_period": 1, "reduction_factor": 2,
            "space": {"keep_prob": {"low": 0.5, "high": 0.9}, "lr": {"low": 0.01, "high": 0.2}}}
    config = _write(tmp_path / "search.yaml", {
        **search, "trials": trials, "val_images": 8, "max_concurrent_trials": 2, "audit_top": 0,
        "base": {"data": str(image_folder), "val_size": 20, "device": "cpu", "bf16": False, "epochs": 2,
                 "batch_size": 16, "method": "smoothblock"}})
    argv = ["--mlflow-uri", mlflow_server, "--storage", str(storage), "--address", cluster.address]
    driver = subprocess.Popen([sys.executable, "-m", "search.cli", "search", "--config", config, "--name", name,
                               *argv], env={**os.environ, "HOME": str(ray_home)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    client = MlflowClient(mlflow_server)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and driver.poll() is None:
            if client.get_experiment_by_name(name) is not None and \
                    sum(r.info.status == "FINISHED" for r in _children(client, name)) >= after_finished:
                time.sleep(jitter)
                break
            time.sleep(0.2)
    finally:
        ended_by_itself = driver.poll() is not None
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    assert not ended_by_itself, f"{why}: the search ended before the kill"
    before = {r.info.run_id: r for r in _children(client, name) if r.info.status == "FINISHED"}

    try:
        assert main(["search", "--resume", name, *argv]) == 0, why
    finally:
        ray.shutdown()
    # As many completed trials as asked for, each with exactly one FINISHED run, logged once.
    ray_trials = tune.ExperimentAnalysis(str(storage / name)).trials
    assert len(ray_trials) == trials and {t.status for t in ray_trials} == {"TERMINATED"}, why
    children = _children(client, name)
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert sorted(c.data.tags["ray.trial_id"] for c in finished) == sorted(t.trial_id for t in ray_trials), why
    for run in finished:  # each report logged once: steps 1, 2, ... without a repeat
        steps = [m.step for m in client.get_metric_history(run.info.run_id, metric)]
        assert steps == list(range(1, len(steps) + 1)) and steps, why
    # No finished trial ran again: its run is still FINISHED, untouched since the kill.
    after = {c.info.run_id: c for c in children}
    for run_id, run in before.items():
        assert after[run_id].info.status == "FINISHED" and after[run_id].info.end_time == run.info.end_time, why
    # Runs of trials the kill interrupted are closed, none left RUNNING.
    assert {c.info.status for c in children} <= {"FINISHED", "KILLED"}, why
    parent = client.get_run(finished[0].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_finished"] == trials, why


def test_fractional_gpus_put_several_trials_on_one_gpu_node(tmp_path, image_folder, mlflow_server, cluster):
    # A node that declares one GPU (Ray schedules by the declared count; the trials compute on CPU).
    gpu_node = cluster.add_node(num_cpus=2, num_gpus=1)
    storage = tmp_path / "results"
    config = _write(tmp_path / "gpu.yaml", {
        "trainable": "posthoc", "model": str(tiny_checkpoint(tmp_path / "m.safetensors", image_folder)),
        "trials": 6, "val_images": 8, "cpus_per_trial": 0.25, "audit_top": 0,
        "base": {"data": str(image_folder), "val_size": 20, "device": "cpu", "bf16": False},
        "space": {"keep_prob": {"low": 0.5, "high": 0.9}, "ensemble": [4]}})
    try:
        assert main(["search", "--config", config, "--gpus_per_trial", "0.25", "--name", "gpus", "--address",
                     cluster.address, "--mlflow-uri", mlflow_server, "--storage", str(storage)]) == 0
    finally:
        ray.shutdown()
        cluster.remove_node(gpu_node)
    folders = sorted((storage / "gpus").glob("posthoc_trial_*"))
    results = [json.loads((f / "result.json").read_text().splitlines()[0]) for f in folders]
    assert len(results) == 6
    runs = _children(MlflowClient(mlflow_server), "gpus")
    assert len(runs) == 6 and {r.info.status for r in runs} == {"FINISHED"}
    # Four quarter-GPU slots (one holds the undefended baseline at first): trials overlap in time.
    spans = sorted((r.info.start_time, r.info.end_time) for r in runs)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])), spans
