"""Faults made to happen for real, and what the user reads: one line naming the fault and the way on.

Each test runs ``smoothblock search`` as a real process (its own local Ray), makes the fault happen
(a full filesystem, a read-only one, the tracking server killed), then checks the line, the exit
status, the traceback log the line names, and that ``--resume`` finishes every trial exactly once.
A full or read-only filesystem is a real tmpfs of a few MB, which needs the right to mount (root,
as in CI); without it those tests are skipped, and the checkpoint's torn-write test uses a write
that raises ENOSPC instead. The lost node is in test_cluster.py; docs/reliability.md lists them all.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import socket as socket_module
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from .search_fixtures import free_port, tiny_checkpoint

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "16m"):
    """A real filesystem of ``size`` at ``path`` (skips the test where mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small filesystem needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(folder: Path) -> Path:
    """Write ``folder``'s filesystem full; the file that fills it."""
    filler = folder / "filler"
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def _config(tmp_path: Path, image_folder: Path, trials: int, eot_steps: int = 2) -> str:
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump({
        "trainable": "posthoc", "model": str(tiny_checkpoint(tmp_path / "m.safetensors", image_folder)),
        "trials": trials, "val_images": 8, "chunk_images": 4, "audit_top": 0, "max_concurrent_trials": 1,
        "eot_iter": 2, "eot_steps": eot_steps,
        "base": {"data": str(image_folder), "val_size": 20, "device": "cpu", "bf16": False},
        "space": {"method": ["smoothblock", "dropblock"], "block_size": {"low": 1, "high": 3},
                  "keep_prob": {"low": 0.5, "high": 0.9}}}))
    return str(path)


def _start(argv: list[str], ray_home: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "search.cli", "search", *argv], text=True,
                            env={**os.environ, "HOME": str(ray_home), "PYTHONUNBUFFERED": "1", **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _after_first_trial(driver: subprocess.Popen, timeout: float = 300) -> list[str]:
    """The driver's output lines up to its first trial line."""
    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = driver.stdout.readline()
        if not line and driver.poll() is not None:
            break
        lines.append(line)
        if line.startswith("trial "):
            return lines
    raise AssertionError(f"no trial finished: {''.join(lines)}{driver.stderr.read()[-3000:]}")


def _stopped_in_one_line(driver: subprocess.Popen, before: list[str], status: int, fault: str, name: str,
                         started: bool = True) -> str:
    """The driver's end: ``status``, no traceback anywhere, and a last line naming ``fault``, the
    resume command and the traceback log (which exists); that line."""
    out, err = driver.communicate(timeout=300)
    text = "".join(before) + out + err
    assert driver.returncode == status, text[-4000:]
    assert "Traceback" not in text and "[state-dump]" not in text, text[-4000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"smoothblock: error: {fault}"), text[-4000:]
    way_on = f"continue with: smoothblock search --resume {name}" if started else "run the command again"
    assert way_on in last, last
    log = re.search(r"traceback in (\S+)\)$", last).group(1)
    assert "Traceback" in Path(log).read_text()
    return last


def _each_trial_finished_once(uri: str, name: str, trials: int) -> None:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    runs = [r for r in client.search_runs([experiment.experiment_id], max_results=1000)
            if r.data.tags.get("smoothblock.role") == "trial"]
    finished = [r.data.tags["ray.trial_id"] for r in runs if r.info.status == "FINISHED"]
    assert len(finished) == trials and len(set(finished)) == trials, [(r.data.tags["ray.trial_id"], r.info.status)
                                                                        for r in runs]
    assert {r.info.status for r in runs} <= {"FINISHED", "KILLED"}
    for run in runs:
        if run.info.status == "FINISHED":
            assert "robust_acc" in run.data.metrics and run.data.params


def test_the_mlflow_stores_disk_filling_up_mid_search_ends_in_one_line_and_resumes(tmp_path, image_folder,
                                                                                   ray_home):
    trials, name = 5, "disk-full"
    with tmpfs(tmp_path / "small") as small:
        uri = f"sqlite:///{small / 'mlflow.db'}"
        storage = tmp_path / "results"
        argv = ["--config", _config(tmp_path, image_folder, trials), "--name", name, "--mlflow-uri", uri,
                "--storage", str(storage)]
        driver = _start(argv, ray_home)
        before = _after_first_trial(driver)
        filler = fill(small)
        line = _stopped_in_one_line(driver, before, 74, "the disk is full", name)
        assert f"{small / 'mlflow.db'} (the MLflow store)" in line and f"--storage {storage}" in line
        filler.unlink()  # the user frees the disk, then continues
        resumed = _start(["--resume", name, "--storage", str(storage)], ray_home)
        out, err = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, err[-3000:]
        _each_trial_finished_once(uri, name, trials)


def test_a_results_folder_that_refuses_writes_ends_in_one_line(tmp_path, image_folder, ray_home):
    with tmpfs(tmp_path / "readonly") as folder:
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        argv = ["--config", _config(tmp_path, image_folder, 2), "--name", "read-only",
                "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--storage", str(folder / "results")]
        driver = _start(argv, ray_home)
        out, err = driver.communicate(timeout=300)
        assert driver.returncode == 74, err[-3000:]
        assert "Traceback" not in out + err
        (last,) = err.strip().splitlines()[-1:]
        assert last.startswith(f"smoothblock: error: cannot write {folder / 'results'}"), last
        assert "the search had not started: run the command again" in last, last


def _mlflow_server(root: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                             f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=root, start_new_session=True)
    import urllib.request

    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("mlflow server did not start")


def test_the_tracking_server_gone_past_the_ride_out_ends_in_one_line_and_resumes(tmp_path, image_folder, ray_home):
    trials, name, port = 4, "server-gone", free_port()
    uri, storage = f"http://127.0.0.1:{port}", tmp_path / "results"
    server = _mlflow_server(tmp_path, port)
    try:
        # MLflow's client rides out a server away for a while (its retries); here a short while.
        # Trials of a few seconds each (long EOT): the server goes while most are still to come.
        driver = _start(["--config", _config(tmp_path, image_folder, trials, eot_steps=200), "--name", name,
                         "--mlflow-uri", uri,
                         "--storage", str(storage)], ray_home,
                        MLFLOW_HTTP_REQUEST_MAX_RETRIES="1", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1",
                        MLFLOW_HTTP_REQUEST_TIMEOUT="5")
        before = _after_first_trial(driver)
        _stop(server)
        line = _stopped_in_one_line(driver, before, 69, f"the MLflow tracking server {uri} stopped answering", name)
        assert f"--storage {storage}" in line
        server = _mlflow_server(tmp_path, port)  # back, on the same store
        resumed = _start(["--resume", name, "--storage", str(storage)], ray_home)
        out, err = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, err[-3000:]
        _each_trial_finished_once(uri, name, trials)
    finally:
        _stop(server)


def _stop(server: subprocess.Popen) -> None:
    """The server and its workers, killed (its own process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait()


def test_a_full_disk_never_leaves_a_torn_checkpoint(tmp_path):
    import torch

    from smoothblock.checkpoint import save_training_state

    state = {"epoch": 1, "weights": torch.zeros(64, 1024)}  # 256 KiB
    with tmpfs(tmp_path / "tiny", size="400k") as folder:
        path = folder / "last.pt"
        save_training_state(path, state)
        before = path.read_bytes()
        with pytest.raises(OSError) as raised:
            save_training_state(path, {"epoch": 2, "weights": torch.zeros(64, 1024)})
        # Named as a full disk (torch's own error says "unexpected pos"), the old checkpoint whole.
        assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(path)
        assert path.read_bytes() == before and sorted(p.name for p in folder.iterdir()) == ["last.pt"]


def test_a_write_that_fails_half_way_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    """The stand-in for a full disk where no small filesystem can be mounted: the real write path,
    whose file write raises ENOSPC half-way."""
    import torch

    import smoothblock.checkpoint as checkpoint

    path = tmp_path / "last.pt"
    checkpoint.save_training_state(path, {"epoch": 1})
    before = path.read_bytes()

    def half_then_full(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 half a zip")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))

    monkeypatch.setattr(torch, "save", half_then_full)
    with pytest.raises(OSError):
        checkpoint.save_training_state(path, {"epoch": 2})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_memory_exhausted_on_a_node_ends_in_one_line(tmp_path, image_folder, ray_home):
    """Ray's memory monitor kills a worker when its node runs out of memory: here a node whose
    threshold is already passed (``RAY_memory_usage_threshold``), so the first task (the base's
    scoring, with an empty cache) is killed, and not retried (``RAY_task_oom_retries``)."""
    driver = _start(["--config", _config(tmp_path, image_folder, 2), "--name", "out-of-memory",
                     "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--storage", str(tmp_path / "results")],
                    ray_home, SMOOTHBLOCK_CACHE=str(tmp_path / "cache"), RAY_memory_usage_threshold="0.01",
                    RAY_memory_monitor_refresh_ms="50", RAY_task_oom_retries="0")
    line = _stopped_in_one_line(driver, [], 71, "a node ran out of memory", "out-of-memory", started=False)
    assert "fewer trials at once" in line


def _head(port: int, ray_home: Path) -> subprocess.Popen:
    """A one-CPU Ray head on ``port`` in a process group of its own (so it can be killed whole)."""
    head = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", f"--port={port}",
                             "--num-cpus=1", "--include-dashboard=false", "--block"],
                            env={**os.environ, "HOME": str(ray_home)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        with contextlib.suppress(OSError):
            socket_module.create_connection(("127.0.0.1", port), timeout=1).close()
            time.sleep(3)  # the raylet after the GCS
            return head
        time.sleep(0.5)
    _stop(head)
    raise RuntimeError("the Ray head did not start")


def test_the_clusters_head_gone_ends_in_one_line_and_resumes_on_a_new_head(tmp_path, image_folder, ray_home):
    trials, name, port = 5, "cluster-gone", free_port()
    uri, storage, address = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "results", f"127.0.0.1:{port}"
    head = _head(port, ray_home)
    try:
        driver = _start(["--config", _config(tmp_path, image_folder, trials, eot_steps=200), "--name", name,
                         "--mlflow-uri", uri, "--storage", str(storage), "--address", address], ray_home)
        before = _after_first_trial(driver)
        _stop(head)  # the head node's processes, all at once, without grace
        line = _stopped_in_one_line(driver, before, 69, "the Ray cluster is gone", name)
        assert f"--storage {storage} --address {address}" in line
        head = _head(port, ray_home)  # a new head where the old one was
        resumed = _start(["--resume", name, "--storage", str(storage), "--address", address], ray_home)
        out, err = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, err[-3000:]
        _each_trial_finished_once(uri, name, trials)
    finally:
        _stop(head)
