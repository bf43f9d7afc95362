"""APGD on the batched EOT gradient (smoothblock.attacks.apgd): torchattacks' iterates where nothing is
random, one draw there, and every draw's prefix run once where something is."""
from __future__ import annotations

import pytest
import torch
import torchattacks

from smoothblock import Config
from smoothblock.attacks.apgd import apgd, dlr_loss
from smoothblock.defended import build_model


def _model(method: str = "none", position: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(Config(method=method, positions=[position], block_size=2, keep_prob=0.7, device="cpu")).eval()


def _batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_on_a_deterministic_model_gives_torchattacks_iterates(norm, eps, loss):
    model, (x, y) = _model(), _batch()
    reference = torchattacks.APGD(model, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, steps=12, loss=loss,
                                  eot_iter=1, n_restarts=1)
    torch.manual_seed(3)
    _, expected = reference.perturb(x, y, best_loss=True)  # the highest-loss iterate, as the registry used
    torch.manual_seed(3)
    ours = apgd(model, x, y, eps=eps, steps=12, norm=norm, loss=loss, draws=20)  # one draw: nothing is random
    moved = (expected - x).flatten(1)
    assert (moved.abs().amax(1) if norm == "linf" else moved.norm(dim=1)).max() > eps / 4  # the attack moved
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_apgd_stays_in_the_ball_and_raises_the_loss_of_a_random_model(norm, eps):
    model, (x, y) = _model("smoothblock", position=3), _batch()
    torch.manual_seed(0)
    adv = apgd(model, x, y, eps=eps, steps=10, norm=norm, draws=8)
    delta = (adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-5).all() and adv.min() >= 0 and adv.max() <= 1
    torch.manual_seed(1)
    before = torch.nn.functional.cross_entropy(torch.stack([model(x) for _ in range(16)]).mean(0), y)
    after = torch.nn.functional.cross_entropy(torch.stack([model(adv) for _ in range(16)]).mean(0), y)
    assert after > before


def test_apgd_runs_the_prefix_once_per_step_and_the_draws_behind_it():
    model, (x, y) = _model("smoothblock", position=3), _batch(4)
    stem: list[int] = []
    next(iter(model.stages.values())).register_forward_hook(lambda m, args, out: stem.append(args[0].shape[0]))
    apgd(model, x, y, eps=8 / 255, steps=5, draws=20)
    assert stem == [4] * 6  # the start and five steps, each one pass of the four images, not 20


def test_the_dlr_loss_is_torchattacks():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(16, 10, generator=g), torch.randint(0, 10, (16,), generator=g)
    logits[0, labels[0]] = 9.0  # one image whose label is the top logit
    expected = torchattacks.APGD.dlr_loss(None, logits, labels)
    torch.testing.assert_close(dlr_loss(logits, labels), expected)
