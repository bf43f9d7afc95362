"""The shipped resnet20-cifar10: loads offline from the package, and on 500 real CIFAR-10 test
images (when ../shared/datasets/cifar10-jpg exists) it is accurate and SmoothBlock at position 1
raises its PGD accuracy (thesis Table 4.1)."""
import re

import pytest
import torch

import smoothblock
from smoothblock.checkpoint import load_checkpoint
from smoothblock.data import load_dataset
from smoothblock.evaluation import evaluate
from smoothblock.hub import WEIGHTS_DIR, resolve

from .conftest import SHARED_CIFAR

NAME = "resnet20-cifar10"
# Issue 3 asks for 90% on the test set; the model shipped now reaches 89.94% (its card says so),
# and a better one is to replace it under the same name. This floor catches a broken model.
FLOOR = 0.88
THESIS_POSTHOC = dict(method="smoothblock", positions=[1], block_size=3, keep_prob=0.7, gamma="thesis")


def test_it_ships_inside_the_package_with_its_card_and_loads_without_network(monkeypatch):
    # No download can happen: any socket use fails the test.
    monkeypatch.setattr("socket.socket.connect", lambda *a, **k: pytest.fail("load_model used the network"))
    assert NAME in smoothblock.list_pretrained()
    model = smoothblock.load_model(NAME)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert resolve(NAME).stat().st_size < 2_000_000
    cfg, _ = load_checkpoint(resolve(NAME))
    # Trained without the validation split that searches score on (the presets' val_size/split_seed).
    assert (cfg.arch, cfg.method, cfg.val_size, cfg.split_seed) == ("resnet20", "none", 5000, 0)
    card = (WEIGHTS_DIR / f"{NAME}.md").read_text()
    assert re.search(r"Clean accuracy on the 10,000 test images: ([\d.]+)%", card)
    epochs = (WEIGHTS_DIR / f"{NAME}.log.jsonl").read_text().splitlines()
    assert len(epochs) == len(re.findall(r"^\| \d+ \|", card, flags=re.M)) > 0


@pytest.mark.skipif(not (SHARED_CIFAR / "test").is_dir(), reason="no real CIFAR-10 here")
def test_its_card_states_the_clean_accuracy_it_has_on_the_whole_test_set():
    test, _ = load_dataset(str(SHARED_CIFAR), "test")
    measured = evaluate(smoothblock.load_model(NAME), test, attacks=(), progress=False)["clean_acc"]
    stated = re.search(r"Clean accuracy on the 10,000 test images: ([\d.]+)%", (WEIGHTS_DIR / f"{NAME}.md").read_text())
    assert f"{100 * measured:.2f}" == stated.group(1) and measured >= FLOOR


@pytest.mark.skipif(not (SHARED_CIFAR / "test").is_dir(), reason="no real CIFAR-10 here")
def test_on_500_real_test_images_it_is_accurate_and_smoothblock_raises_pgd_accuracy():
    test, _ = load_dataset(str(SHARED_CIFAR), "test")
    first = test.take(slice(0, 500))
    plain = evaluate(smoothblock.load_model(NAME), first, attacks=("pgd",), progress=False)
    defended = evaluate(smoothblock.load_model(NAME, **THESIS_POSTHOC), first, attacks=("pgd",), progress=False)
    # 500 images leave a standard error of about 1.5 points around the whole test set's figure.
    assert plain["clean_acc"] >= FLOOR - 0.03, plain
    # A raise of 10 images or more: undefended PGD accuracy is ~0 (0 of 500 here), so 10 is far
    # outside chance. The 89.94% soup gets 9.8% here (0.0% undefended); the 89.98% soup before it
    # 9.2%, the 89.72% SAM model 8.4%, the 89.51% one 7.4%, the 89.37% one 4.6%.
    assert defended["pgd_acc"] >= plain["pgd_acc"] + 0.02, (plain, defended)
