"""Reads 500 real CIFAR-10 test images from ../shared/datasets/cifar10-jpg when it exists."""
import pytest
import torch

from smoothblock import build_model, Config
from smoothblock.data import CIFAR10_CLASSES, load_dataset
from smoothblock.evaluation import evaluate

from .conftest import SHARED_CIFAR

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not (SHARED_CIFAR / "test").is_dir(), reason="no real CIFAR-10 here")]


def test_500_real_test_images():
    test, classes = load_dataset(str(SHARED_CIFAR), "test")
    assert classes == CIFAR10_CLASSES
    assert test.images.shape == (10_000, 3, 32, 32) and test.images.dtype == torch.uint8
    assert torch.equal(torch.bincount(test.labels), torch.full((10,), 1000))
    first = test.take(slice(0, 500))
    # The first 500 are a mix of classes, not the 500 airplanes the folder lists first.
    assert torch.bincount(first.labels, minlength=10).min() >= 30
    assert 60 < first.images.float().mean() < 190  # real photographs, not blank or saturated
    metrics = evaluate(build_model(Config(method="none")), first, attacks=(), progress=False)
    assert metrics["images"] == 500 and 0.0 <= metrics["clean_acc"] <= 1.0
    # The cache makes the second read fast and identical.
    again, _ = load_dataset(str(SHARED_CIFAR), "test")
    assert torch.equal(again.images[:500], first.images)
