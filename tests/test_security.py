"""Nothing a file holds runs as code, services stay on 127.0.0.1, credentials stay out of files and logs."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest
import torch
import yaml
from mlflow import MlflowClient

from search.cli import main

from .conftest import fails_in_one_line
from .search_fixtures import local_ray, tiny_checkpoint  # noqa: F401



class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _posthoc(tmp_path, image_folder, model) -> str:
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump({
        "trainable": "posthoc", "model": str(model), "trials": 2, "val_images": 8, "audit_top": 0,
        "base": {"data": str(image_folder), "val_size": 20, "device": "cpu", "bf16": False},
        "space": {"keep_prob": {"low": 0.5, "high": 0.9}}}))
    return str(path)


def test_a_checkpoint_that_would_run_code_is_refused_by_the_search(tmp_path, image_folder, mlflow_server, capsys):
    marker = tmp_path / "pwned"
    raw, zipped = tmp_path / "evil.pt", tmp_path / "evil-zip.pt"
    with open(raw, "wb") as f:
        pickle.dump({"format": "smoothblock/2", "model": _RunsCode(marker)}, f)
    torch.save({"format": "smoothblock/2", "model": _RunsCode(marker), "config": ""}, zipped)
    for evil in (raw, zipped):
        fails_in_one_line(capsys, main, ["search", "--config", _posthoc(tmp_path, image_folder, evil), "--name", "evil",
                                         "--mlflow-uri", mlflow_server, "--storage", str(tmp_path / "results")],
                          "would run code when unpickled")
    assert not marker.exists()
    assert MlflowClient(mlflow_server).get_experiment_by_name("evil") is None
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("command", ["search", "train"])
def test_a_yaml_file_that_would_run_code_is_refused(tmp_path, capsys, command):
    """Search files and exported configurations (what ``train --config`` takes) are read with the
    safe loader: a Python tag is an error, never a call."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "best.yaml"
    evil.write_text(f"keep_prob: !!python/object/apply:os.system ['touch {marker}']\n")
    fails_in_one_line(capsys, main, [command, "--config", str(evil)], "not valid YAML")
    assert not marker.exists()


def test_credentials_in_the_tracking_uri_reach_no_file_and_no_output(tmp_path, image_folder, mlflow_server,
                                                                     local_ray, capsys):
    secret = "hunter2"
    host = mlflow_server.removeprefix("http://")
    storage = tmp_path / "results"
    config = _posthoc(tmp_path, image_folder, tiny_checkpoint(tmp_path / "m.safetensors", image_folder))
    assert main(["search", "--config", config, "--name", "creds", "--mlflow-uri", f"http://alice:{secret}@{host}",
                 "--storage", str(storage)]) == 0
    out = capsys.readouterr()
    assert "http://alice:***@" in out.out and secret not in out.out + out.err
    written = [p for p in storage.rglob("*") if p.is_file()]
    assert written and not [p for p in written if secret.encode() in p.read_bytes()]
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("creds")
    for run in client.search_runs([experiment.experiment_id]):
        assert secret not in repr(run.data.params) + repr(run.data.tags)
    # Resuming needs the password again, from the user, not from a file.
    fails_in_one_line(capsys, main, ["search", "--resume", "creds", "--storage", str(storage)],
                      "whose credentials are not stored; pass --mlflow-uri or set MLFLOW_TRACKING_URI")


def test_the_local_ray_of_a_search_starts_no_dashboard(ray_home):
    """Ray's dashboard would serve the cluster's state over HTTP; a local search does not start it
    (on a cluster, cluster.yaml binds it to 127.0.0.1)."""
    code = ("import socket; from search.tuner import init_ray; init_ray(None); "
            "print(socket.socket().connect_ex(('127.0.0.1', 8265)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HOME": str(ray_home), "RAY_AUTH_MODE": "token"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.strip().splitlines()[-1]) != 0  # nothing listens on the dashboard's port
