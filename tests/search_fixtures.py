"""Helpers for the search tests: a local Ray per module, a tiny checkpoint, a free port.

The session-wide services (``ray_home``, ``mlflow_server``) live in conftest.py: one of each for
the whole run, since Ray caches its authentication token per process."""
from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import free_port  # noqa: F401  (the tests import it from here, with the fixtures)


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
