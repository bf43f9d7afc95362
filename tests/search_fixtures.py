"""Real services for the search tests: an ``mlflow server`` on 127.0.0.1 and a local Ray."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_home(tmp_path_factory):
    """A private HOME (Ray's auth token lives in ~/.ray) and token authentication on, as the CLI does."""
    home = tmp_path_factory.mktemp("home")
    saved = {k: os.environ.get(k) for k in ("HOME", "RAY_AUTH_MODE")}
    os.environ.update(HOME=str(home), RAY_AUTH_MODE="token")
    yield home
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real tracking server (sqlite backend, proxied artifact store) on 127.0.0.1."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, cwd=root)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield uri
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def local_ray(ray_home):
    """A real local Ray (2 CPUs) for the searches run in this process."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="warning")
    yield
    ray.shutdown()


def tiny_checkpoint(path: Path, data: Path) -> Path:
    """A ResNet20 with random weights and the configuration of the tiny image folder."""
    from smoothblock import Config
    from smoothblock.checkpoint import save_weights
    from smoothblock.models import create_model

    import torch

    torch.manual_seed(0)
    cfg = Config(data=str(data), val_size=20, method="none", bf16=False, device="cpu")
    save_weights(path, create_model("resnet20").state_dict(), cfg)
    return path
