from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from PIL import Image

# Ray reads its authentication mode when it is imported, and test modules import Ray at collection:
# token mode (Ray's default for local clusters, and what the CLI sets) is fixed here, first.
os.environ.setdefault("RAY_AUTH_MODE", "token")

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpg"

#: The integration lane: real services, real data, whole training runs (``pytest -m integration``);
#: the fast lane (``pytest -m "not integration"``) is layers, configuration and attacks on tiny models.
integration = pytest.mark.integration
#: Fixtures that start real services: a test that uses one is in the integration lane.
SERVICE_FIXTURES = {"mlflow_server", "ray_home", "local_ray"}


def torch_build_line() -> str:
    """One line: which torch build the tests run on and on what device (the session header)."""
    if torch.version.cuda:
        build = f"CUDA {torch.version.cuda} build"
    elif getattr(torch.version, "hip", None):
        build = f"ROCm {torch.version.hip} build"
    else:
        build = "CPU build"
    if torch.cuda.is_available():
        device = f"device cuda ({torch.cuda.get_device_name(0)})"
    else:
        device = "device cpu" + (" (no GPU: README's CPU note installs the CPU build, without the CUDA libraries)"
                                 if torch.version.cuda else "")
    return f"torch {torch.__version__}, {build}, {device}"


def pytest_report_header(config):
    return torch_build_line()


def pytest_collection_modifyitems(items):
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(integration)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fails_in_one_line(capsys, main, argv: list[str], message: str) -> None:
    """``main(argv)`` refuses with exit status 2 and one stderr line, no traceback, naming ``message``."""
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's own refusals (an unknown choice) exit from inside
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err, err


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test writes decoded tensors and downloads into its own cache, never ~/.cache."""
    monkeypatch.setenv("SMOOTHBLOCK_CACHE", str(tmp_path_factory.mktemp("cache")))


def make_image_folder(root: Path, per_class: tuple[int, int] = (8, 2), classes: int = 10, seed: int = 0) -> Path:
    """An ImageFolder tree (train/, test/) of random 32x32 PNGs whose mean colour encodes the class."""
    g = torch.Generator().manual_seed(seed)
    for split, count in zip(("train", "test"), per_class):
        for k in range(classes):
            d = root / split / f"class{k:02d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                base = torch.full((3, 32, 32), 20.0 + 20 * k)
                img = (base + torch.randint(0, 30, (3, 32, 32), generator=g)).clamp(0, 255).to(torch.uint8)
                Image.fromarray(img.permute(1, 2, 0).numpy()).save(d / f"{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data"))


@pytest.fixture
def tiny_config(image_folder, tmp_path):
    from smoothblock import Config

    return Config(data=str(image_folder), val_size=20, epochs=2, batch_size=16, out_dir=str(tmp_path / "run"),
                  device="cpu", bf16=False)


@pytest.fixture(scope="session")
def ray_home(tmp_path_factory):
    """A private HOME (Ray's auth token lives in ~/.ray) and token authentication on, as the CLI does."""
    home = tmp_path_factory.mktemp("home")
    saved = {k: os.environ.get(k) for k in ("HOME", "RAY_AUTH_MODE")}
    os.environ.update(HOME=str(home), RAY_AUTH_MODE="token")
    # One token for every Ray this run starts: Ray caches it per process, and a cluster started
    # by hand (ray.cluster_utils) does not make one.
    subprocess.run(["ray", "get-auth-token", "--generate"], check=True, capture_output=True)
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
